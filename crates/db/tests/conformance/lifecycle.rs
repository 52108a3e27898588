//! Status changes, progress, the event log and the job queue.

use chrono::Duration;
use serde_json::json;

use loraforge_db::{DbError, EventDetail, TrainedFiles};
use loraforge_domain::status::transition;
use loraforge_domain::{LoraId, Progress, StatusEvent, TrainingStatus, TransitionError};

use crate::helpers::*;

const EVENTS: [StatusEvent; 7] = [
    StatusEvent::Enqueue,
    StatusEvent::Start,
    StatusEvent::BeginValidation,
    StatusEvent::Complete,
    StatusEvent::Requeue,
    StatusEvent::Fail,
    StatusEvent::Cancel,
];

pub async fn every_transition_through_apply_event(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let later = now() + Duration::minutes(10);
    let mut allowed = 0;
    for (i, from) in TrainingStatus::ALL.into_iter().enumerate() {
        for (j, event) in EVENTS.into_iter().enumerate() {
            let lora = create(&repo, new_lora(owner, ds, &format!("T {i} {j}"), now())).await;
            let before = drive(&repo, lora.id, from, now()).await;
            let log = repo.events_after(lora.id, 0, 100).await.unwrap();
            let detail = EventDetail::because(format!("because {i} {j}"));
            let got = repo.apply_event(lora.id, event, detail, later).await;
            match transition(from, event) {
                Ok(to) => {
                    allowed += 1;
                    let after = got.unwrap_or_else(|e| panic!("{from} + {event:?}: {e}"));
                    assert_eq!(after.status, to);
                    assert_eq!(after.updated_at, later);
                    assert_eq!(after.error, Some(format!("because {i} {j}")));
                    assert_eq!(
                        after.completed_at,
                        (to == TrainingStatus::Completed).then_some(later)
                    );
                    assert_eq!(repo.get_lora(lora.id).await.unwrap(), Some(after.clone()));
                    let new_log = repo.events_after(lora.id, 0, 100).await.unwrap();
                    assert_eq!(new_log.len(), log.len() + 1);
                    let last = new_log.last().unwrap();
                    assert_eq!(
                        (last.kind.as_str(), last.status, last.at),
                        ("status", to, later)
                    );
                    assert_eq!(
                        last.data,
                        json!({ "from": from.as_str(), "to": to.as_str(), "event": event.as_str(),
                                "error": format!("because {i} {j}") })
                    );
                }
                Err(_) => {
                    assert!(
                        matches!(got, Err(DbError::Transition(TransitionError { from: f, event: e })) if f == from && e == event),
                        "{from} + {event:?}: {got:?}"
                    );
                    assert_eq!(
                        repo.get_lora(lora.id).await.unwrap(),
                        Some(before),
                        "{from} + {event:?} changed the LoRA"
                    );
                    assert_eq!(
                        repo.events_after(lora.id, 0, 100).await.unwrap(),
                        log,
                        "{from} + {event:?} logged"
                    );
                }
            }
        }
    }
    assert_eq!(allowed, 13);
    let missing = repo
        .apply_event(
            LoraId::new(),
            StatusEvent::Enqueue,
            EventDetail::default(),
            now(),
        )
        .await;
    assert!(matches!(missing, Err(DbError::NotFound)), "{missing:?}");
}

pub async fn events_after_is_ordered_and_resumable(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let a = create(&repo, new_lora(owner, ds, "A", now())).await;
    let b = create(&repo, new_lora(owner, ds, "B", now())).await;
    apply(&repo, a.id, StatusEvent::Enqueue, now())
        .await
        .unwrap();
    apply(&repo, b.id, StatusEvent::Enqueue, now())
        .await
        .unwrap();
    let progress = Progress {
        stage: Some("caching_latents".into()),
        percent: 5,
        estimated_remaining: Some(600),
    };
    repo.record_progress(a.id, &progress, now()).await.unwrap();
    repo.update_description(a.id, Some("now with a description".into()), now())
        .await
        .unwrap();

    let log = repo.events_after(a.id, 0, 100).await.unwrap();
    let kinds: Vec<_> = log.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["created", "status", "progress", "updated"]);
    assert!(log.windows(2).all(|w| w[0].id < w[1].id));
    assert!(log.iter().all(|e| e.lora_id == a.id));
    assert_eq!(
        log[2].data,
        json!({ "stage": "caching_latents", "percent": 5, "estimated_remaining": 600 })
    );
    assert_eq!(log[2].status, TrainingStatus::Queued);
    assert_eq!(
        log[3].data,
        json!({ "description": "now with a description" })
    );

    // Resuming after an id gives what follows; the limit caps the page.
    assert_eq!(
        repo.events_after(a.id, log[1].id, 100).await.unwrap(),
        log[2..].to_vec()
    );
    assert_eq!(
        repo.events_after(a.id, log[0].id, 1).await.unwrap(),
        log[1..2].to_vec()
    );
    assert!(
        repo.events_after(a.id, log[3].id, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(repo.events_after(b.id, 0, 100).await.unwrap().len(), 2);
    assert!(
        repo.events_after(LoraId::new(), 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn progress_and_description_are_visible(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let lora = create(&repo, new_lora(owner, ds, "Progressing", now())).await;
    apply(&repo, lora.id, StatusEvent::Enqueue, now())
        .await
        .unwrap();
    let job = repo
        .claim_next_job("w1", 2, now() + Duration::minutes(5), now())
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(job.lora.id, lora.id);

    let later = now() + Duration::minutes(1);
    let p = Progress {
        stage: Some("training".into()),
        percent: 40,
        estimated_remaining: Some(120),
    };
    repo.record_progress(lora.id, &p, later).await.unwrap();
    let got = repo.get_lora(lora.id).await.unwrap().unwrap();
    assert_eq!(got.progress, p);
    assert_eq!(got.status, TrainingStatus::Training);
    assert_eq!(got.updated_at, later);
    let last = repo
        .events_after(lora.id, 0, 100)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (last.kind.as_str(), last.status),
        ("progress", TrainingStatus::Training)
    );

    let missing = repo.record_progress(LoraId::new(), &p, later).await;
    assert!(matches!(missing, Err(DbError::NotFound)), "{missing:?}");

    let updated = repo
        .update_description(lora.id, Some("a new description".into()), later)
        .await
        .unwrap();
    assert_eq!(updated.description.as_deref(), Some("a new description"));
    assert_eq!(updated.progress, p);
    let cleared = repo.update_description(lora.id, None, later).await.unwrap();
    assert_eq!(cleared.description, None);
    assert_eq!(repo.get_lora(lora.id).await.unwrap(), Some(cleared));
    let missing = repo.update_description(LoraId::new(), None, later).await;
    assert!(matches!(missing, Err(DbError::NotFound)), "{missing:?}");
}

pub async fn claim_is_fifo_and_leases(repo: Repo) {
    let (alice, a_ds) = user(&repo).await;
    let (bob, b_ds) = user(&repo).await;
    let t = |m: i64| now() + Duration::minutes(m);
    let second = create(&repo, new_lora(bob, b_ds, "Second", t(2))).await;
    let first = create(&repo, new_lora(alice, a_ds, "First", t(1))).await;
    let third = create(&repo, new_lora(alice, a_ds, "Third", t(3))).await;
    let pending = create(&repo, new_lora(bob, b_ds, "Pending", t(0))).await;
    for l in [&second, &first, &third] {
        apply(&repo, l.id, StatusEvent::Enqueue, t(4))
            .await
            .unwrap();
    }

    let lease = t(30);
    let job = repo
        .claim_next_job("worker-a", 5, lease, t(5))
        .await
        .unwrap()
        .expect("a job");
    assert_eq!(job.lora.id, first.id);
    assert_eq!(
        (job.worker.as_str(), job.lease_until, job.attempt),
        ("worker-a", lease, 1)
    );
    assert_eq!(job.lora.status, TrainingStatus::Training);
    assert_eq!(
        repo.get_lora(first.id).await.unwrap(),
        Some(job.lora.clone())
    );
    let last = repo
        .events_after(first.id, 0, 100)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        last.data,
        json!({ "from": "queued", "to": "training", "event": "start", "error": null })
    );

    let ids: Vec<_> = [
        repo.claim_next_job("worker-b", 5, lease, t(6))
            .await
            .unwrap()
            .unwrap()
            .lora
            .id,
        repo.claim_next_job("worker-b", 5, lease, t(6))
            .await
            .unwrap()
            .unwrap()
            .lora
            .id,
    ]
    .into();
    assert_eq!(ids, [second.id, third.id]);
    // Pending LoRAs are not in the queue.
    assert_eq!(
        repo.claim_next_job("worker-c", 5, lease, t(7))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        repo.get_lora(pending.id).await.unwrap().unwrap().status,
        TrainingStatus::Pending
    );

    // A requeued job runs again as attempt 2, with fresh progress.
    let p = Progress {
        stage: Some("training".into()),
        percent: 70,
        estimated_remaining: Some(10),
    };
    repo.record_progress(first.id, &p, t(8)).await.unwrap();
    apply(&repo, first.id, StatusEvent::Requeue, t(9))
        .await
        .unwrap();
    let again = repo
        .claim_next_job("worker-d", 5, lease, t(10))
        .await
        .unwrap()
        .expect("requeued job");
    assert_eq!(
        (again.lora.id, again.attempt, again.worker.as_str()),
        (first.id, 2, "worker-d")
    );
    assert_eq!(again.lora.progress, Progress::default());
}

pub async fn claim_skips_users_at_max_active(repo: Repo) {
    let (alice, a_ds) = user(&repo).await;
    let (bob, b_ds) = user(&repo).await;
    let t = |m: i64| now() + Duration::minutes(m);
    let a1 = create(&repo, new_lora(alice, a_ds, "A1", t(1))).await;
    let a2 = create(&repo, new_lora(alice, a_ds, "A2", t(2))).await;
    let b1 = create(&repo, new_lora(bob, b_ds, "B1", t(3))).await;
    for l in [&a1, &a2, &b1] {
        apply(&repo, l.id, StatusEvent::Enqueue, t(4))
            .await
            .unwrap();
    }
    let claim = || repo.claim_next_job("w", 1, t(60), t(5));
    assert_eq!(claim().await.unwrap().unwrap().lora.id, a1.id);
    // Alice has one running: her next waits; Bob's goes first.
    assert_eq!(claim().await.unwrap().unwrap().lora.id, b1.id);
    assert_eq!(claim().await.unwrap(), None);
    // Validating still occupies the slot; a final status frees it.
    apply(&repo, a1.id, StatusEvent::BeginValidation, t(6))
        .await
        .unwrap();
    assert_eq!(claim().await.unwrap(), None);
    apply(&repo, a1.id, StatusEvent::Complete, t(7))
        .await
        .unwrap();
    assert_eq!(claim().await.unwrap().unwrap().lora.id, a2.id);
}

pub async fn concurrent_claimers_never_double_claim(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let only = create(&repo, new_lora(owner, ds, "Only", now())).await;
    apply(&repo, only.id, StatusEvent::Enqueue, now())
        .await
        .unwrap();
    let claimers: Vec<_> = (0..8)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.claim_next_job(&format!("w{i}"), 5, now() + Duration::hours(1), now())
                    .await
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for c in claimers {
        if let Some(job) = c.await.unwrap().unwrap() {
            claimed.push(job);
        }
    }
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!((claimed[0].lora.id, claimed[0].attempt), (only.id, 1));
    let starts = repo
        .events_after(only.id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.status == TrainingStatus::Training);
    assert_eq!(starts.count(), 1);

    // Many jobs of one user, many claimers: never more than max_active of them running.
    let (busy, busy_ds) = user(&repo).await;
    for i in 0..6 {
        let l = create(
            &repo,
            new_lora(
                busy,
                busy_ds,
                &format!("Job {i}"),
                now() + Duration::seconds(i),
            ),
        )
        .await;
        apply(&repo, l.id, StatusEvent::Enqueue, now())
            .await
            .unwrap();
    }
    let claimers: Vec<_> = (0..8)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.claim_next_job(&format!("w{i}"), 2, now() + Duration::hours(1), now())
                    .await
            })
        })
        .collect();
    let mut claimed = 0;
    for c in claimers {
        claimed += usize::from(c.await.unwrap().unwrap().is_some());
    }
    assert_eq!(claimed, 2);
}

pub async fn trained_files_and_verdict_are_recorded_with_the_change(repo: Repo) {
    let (owner, ds) = user(&repo).await;
    let lora = create(&repo, new_lora(owner, ds, "Outputs", now())).await;
    drive(&repo, lora.id, TrainingStatus::Training, now()).await;
    let files = TrainedFiles {
        storage_key: format!("lora-models/{owner}/{}/model.safetensors", lora.id),
        file_size: 231_872,
        sha256: None,
        validation_image_keys: (0..3)
            .map(|i| format!("lora-validation-images/x/validation/{i}.png"))
            .collect(),
    };
    let detail = EventDetail {
        outputs: Some(files.clone()),
        ..EventDetail::default()
    };
    let validating = repo
        .apply_event(lora.id, StatusEvent::BeginValidation, detail, now())
        .await
        .unwrap();
    assert_eq!(validating.status, TrainingStatus::Validating);
    assert_eq!(
        validating.storage_key.as_deref(),
        Some(files.storage_key.as_str())
    );
    assert_eq!(validating.file_size, Some(231_872));
    assert_eq!(
        validating.validation_image_keys,
        files.validation_image_keys
    );
    assert_eq!(validating.validation_passed, None);
    let detail = EventDetail {
        validation_passed: Some(true),
        ..EventDetail::default()
    };
    let done = repo
        .apply_event(lora.id, StatusEvent::Complete, detail, now())
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.validation_passed),
        (TrainingStatus::Completed, Some(true))
    );
    assert_eq!(
        done.storage_key, validating.storage_key,
        "the files stay recorded"
    );
    assert_eq!(repo.get_lora(lora.id).await.unwrap(), Some(done));
    // A refused change records nothing.
    let detail = EventDetail {
        validation_passed: Some(false),
        ..EventDetail::default()
    };
    assert!(
        repo.apply_event(lora.id, StatusEvent::Fail, detail, now())
            .await
            .is_err()
    );
    assert_eq!(
        repo.get_lora(lora.id)
            .await
            .unwrap()
            .unwrap()
            .validation_passed,
        Some(true)
    );
}
