//! What a publish keeps of the validation (the scoring model's scores and the threshold the
//! rule used) and the admin's review queue: only LoRAs waiting for a person (stage
//! `awaiting_review`), never one whose checks are still running (migration 0018).

use chrono::Duration;

use loraforge_db::{LoraQuery, NewRun, PublishVerdict, Settle, TrainedFiles};
use loraforge_domain::validation::ValidationScores;
use loraforge_domain::{LoraId, LoraModel, RunId, StatusEvent, TrainingStatus};

use crate::helpers::*;

fn t(m: i64) -> chrono::DateTime<chrono::Utc> {
    now() + Duration::minutes(m)
}

/// A LoRA of a fresh user, trained by one run and settled with `verdict` and `scores`.
async fn published(
    repo: &Repo,
    name: &str,
    at: i64,
    verdict: PublishVerdict,
    scores: Option<ValidationScores>,
) -> LoraModel {
    let (owner, ds) = user(repo).await;
    let l = create(repo, new_lora(owner, ds, name, t(at))).await;
    apply(repo, l.id, StatusEvent::Enqueue, t(at))
        .await
        .unwrap();
    let claimed = repo
        .claim_next_job("w", 9, t(at + 5), t(at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.lora.id, l.id);
    let run = repo
        .insert_run(&NewRun {
            id: RunId::new(),
            lora_id: l.id,
            attempt: 1,
            backend: "local".into(),
            route_reason: None,
            engine: "w".into(),
            instance_name: format!("loraforge-{}-1", l.id),
            provider_id: "p".into(),
            gpu_type: None,
            price_per_hour: None,
            created_at: t(at),
            started_at: t(at),
        })
        .await
        .unwrap();
    repo.record_run_outcome(run.id, "trained", None, None, t(at))
        .await
        .unwrap();
    let files = TrainedFiles {
        storage_key: format!("lora-models/u/{}/model.safetensors", l.id),
        file_size: 1234,
        validation_image_keys: (0..3).map(|i| format!("v{i}")).collect(),

        sha256: None,
    };
    repo.settle_run(
        run.id,
        Settle::Publish {
            files,
            verdict,
            scores,
        },
        t(at),
    )
    .await
    .unwrap()
    .unwrap()
}

fn review_queue(search: Option<&str>) -> LoraQuery {
    LoraQuery {
        awaiting_review: true,
        include_hidden: true,
        search: search.map(str::to_owned),
        limit: 50,
        ..LoraQuery::default()
    }
}

async fn ids(repo: &Repo, q: &LoraQuery) -> (Vec<LoraId>, u64) {
    let page = repo.list_loras(q).await.unwrap();
    (page.items.iter().map(|s| s.id).collect(), page.total)
}

pub async fn scores_are_kept_and_the_review_queue_holds_only_loras_waiting_for_a_person(
    repo: Repo,
) {
    let scores = ValidationScores {
        scores: vec![0.91, 0.7, 0.2],
        threshold: 0.7,
    };
    let passed = published(
        &repo,
        "Scored pass",
        0,
        PublishVerdict::Complete,
        Some(scores.clone()),
    )
    .await;
    assert_eq!(
        (passed.status, passed.validation_passed),
        (TrainingStatus::Completed, Some(true))
    );
    assert_eq!(passed.validation_scores.as_ref(), Some(&scores));
    let low = ValidationScores {
        scores: vec![0.1, 0.75, 0.3],
        threshold: 0.72,
    };
    let failed = published(
        &repo,
        "Scored fail",
        10,
        PublishVerdict::Fail("Quality validation failed: 1 of 3".into()),
        Some(low.clone()),
    )
    .await;
    // Read back from the database, not only the publish's answer.
    let failed = repo.get_lora(failed.id).await.unwrap().unwrap();
    assert_eq!(
        (
            failed.status,
            failed.validation_passed,
            failed.validation_scores
        ),
        (TrainingStatus::Failed, Some(false), Some(low))
    );

    // Waiting for a person: no scores, stage awaiting_review.
    let waits = published(&repo, "Waits for a look", 20, PublishVerdict::Review, None).await;
    assert!(waits.awaits_review(), "{waits:?}");
    assert_eq!(waits.validation_scores, None);
    // In `validating` with its checks still running (no awaiting_review stage): not in the queue.
    let (owner, ds) = user(&repo).await;
    let checking = create(&repo, new_lora(owner, ds, "Waits not yet", t(30))).await;
    let checking = drive(&repo, checking.id, TrainingStatus::Validating, t(30)).await;
    assert!(!checking.awaits_review());

    assert_eq!(ids(&repo, &review_queue(None)).await, (vec![waits.id], 1));
    // The search path filters the same way ("waits" matches both names).
    assert_eq!(
        ids(&repo, &review_queue(Some("waits"))).await,
        (vec![waits.id], 1)
    );
    let validating = LoraQuery {
        status: Some(TrainingStatus::Validating),
        include_hidden: true,
        limit: 50,
        ..LoraQuery::default()
    };
    assert_eq!(ids(&repo, &validating).await.1, 2, "both are validating");

    // Decided: out of the queue.
    apply(&repo, waits.id, StatusEvent::Complete, t(40))
        .await
        .unwrap();
    assert_eq!(ids(&repo, &review_queue(None)).await, (vec![], 0));
}
