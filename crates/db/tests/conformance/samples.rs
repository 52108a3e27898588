//! Sample batches: insert with the per-user open limit (also under concurrency), listing, the
//! claim / launch / complete path, failures retried with the domain's backoff until failed, a
//! stale attempt's report ignored, and instances watched until confirmed gone.

use std::sync::Arc;

use chrono::Duration;

use loraforge_db::{BatchInsert, NewSampleBatch, SampleInstance};
use loraforge_domain::samples::{PromptInput, SampleRequestInput, SampleSpec, SampleStatus};
use loraforge_domain::{LoraId, SampleBatchId, UserId, keys};

use crate::helpers::*;

fn spec(batch: SampleBatchId, prompts: usize) -> SampleSpec {
    SampleSpec::parse(
        SampleRequestInput {
            prompts: (0..prompts)
                .map(|i| PromptInput {
                    prompt: format!("zxq on a beach {i}"),
                    negative_prompt: (i == 1).then(|| "blurry".to_owned()),
                    seed: Some(40 + i as u64),
                    scale: Some(0.5 * i as f64),
                })
                .collect(),
            width: Some(64),
            height: Some(128),
            steps: Some(4),
        },
        batch,
    )
    .unwrap()
}

fn new_batch(lora: LoraId, user: UserId, prompts: usize) -> NewSampleBatch {
    let id = SampleBatchId::new();
    NewSampleBatch {
        id,
        lora_id: lora,
        user_id: user,
        spec: spec(id, prompts),
    }
}

async fn lora(repo: &Repo) -> (UserId, LoraId) {
    let (u, d) = user(repo).await;
    let l = create(repo, new_lora(u, d, "sampled", now())).await;
    (u, l.id)
}

fn inserted(r: BatchInsert) -> loraforge_db::SampleBatch {
    match r {
        BatchInsert::Inserted(b) => *b,
        other => panic!("not inserted: {other:?}"),
    }
}

fn instance(n: u32) -> SampleInstance {
    SampleInstance {
        backend: "local".into(),
        engine: "engine-1".into(),
        provider_id: format!("local:{n}:1"),
        instance_name: format!("loraforge-s-{n}"),
    }
}

pub async fn sample_batches_insert_list_and_limit_open_ones(repo: Repo) {
    let (u, l) = lora(&repo).await;
    let t0 = now();
    let a = new_batch(l, u, 3);
    let got = inserted(repo.insert_sample_batch(&a, 2, t0).await.unwrap());
    assert_eq!(got.id, a.id);
    assert_eq!(got.status, SampleStatus::Queued);
    assert_eq!((got.attempts, got.steps), (0, 4));
    assert_eq!(got.next_attempt_at, t0);
    assert_eq!(got.instance, None);
    assert_eq!(got.images.len(), 3);
    let im = &got.images[1];
    assert_eq!(
        (im.index, im.seed, im.scale, im.width, im.height),
        (1, 41, 0.5, 64, 128)
    );
    assert_eq!(im.prompt, "zxq on a beach 1");
    assert_eq!(im.negative_prompt.as_deref(), Some("blurry"));
    assert_eq!(im.storage_key, keys::sample_image(u, l, a.id, 1));

    let b = new_batch(l, u, 1);
    inserted(
        repo.insert_sample_batch(&b, 2, t0 + Duration::seconds(1))
            .await
            .unwrap(),
    );
    let third = new_batch(l, u, 1);
    assert_eq!(
        repo.insert_sample_batch(&third, 2, t0).await.unwrap(),
        BatchInsert::TooManyOpen { open: 2 }
    );
    assert!(repo.sample_batch(third.id).await.unwrap().is_none());
    // Another user has their own limit.
    let (u2, l2) = lora(&repo).await;
    inserted(
        repo.insert_sample_batch(&new_batch(l2, u2, 1), 2, t0)
            .await
            .unwrap(),
    );

    let listed = repo.sample_batches_of(l, None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.id).collect::<Vec<_>>(),
        vec![b.id, a.id],
        "newest first"
    );
    assert_eq!(repo.sample_batches_of(l, None, 1).await.unwrap().len(), 1);
    assert_eq!(
        repo.sample_batches_of(l, Some(u), 10).await.unwrap().len(),
        2
    );
    assert!(
        repo.sample_batches_of(l, Some(UserId::new()), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        repo.sample_batch(SampleBatchId::new())
            .await
            .unwrap()
            .is_none()
    );

    // A finished batch frees its slot.
    assert!(repo.claim_sample_batch(a.id, 0, t0).await.unwrap());
    assert!(repo.complete_sample_batch(a.id, 1, t0).await.unwrap());
    inserted(repo.insert_sample_batch(&third, 2, t0).await.unwrap());
}

pub async fn concurrent_sample_requests_stop_at_the_open_limit(repo: Repo) {
    let (u, l) = lora(&repo).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let repo = Arc::clone(&repo);
        tasks.push(tokio::spawn(async move {
            repo.insert_sample_batch(&new_batch(l, u, 1), 2, now())
                .await
                .unwrap()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), BatchInsert::Inserted(_)) {
            ok += 1;
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(repo.sample_batches_of(l, None, 50).await.unwrap().len(), 2);
}

pub async fn sample_attempts_claim_launch_complete_and_end(repo: Repo) {
    let (u, l) = lora(&repo).await;
    let t0 = now();
    let a = new_batch(l, u, 2);
    inserted(repo.insert_sample_batch(&a, 2, t0).await.unwrap());
    assert!(
        repo.due_sample_batches(t0 - Duration::seconds(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = repo.due_sample_batches(t0, 10).await.unwrap();
    assert_eq!(due.iter().map(|b| b.id).collect::<Vec<_>>(), vec![a.id]);

    assert!(repo.claim_sample_batch(a.id, 0, t0).await.unwrap());
    assert!(
        !repo.claim_sample_batch(a.id, 0, t0).await.unwrap(),
        "one claim wins"
    );
    assert!(repo.due_sample_batches(t0, 10).await.unwrap().is_empty());
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!((b.status, b.attempts), (SampleStatus::Rendering, 1));

    // No room: the claim is undone without using the attempt.
    assert!(
        repo.unclaim_sample_batch(a.id, 1, t0 + Duration::seconds(5), t0)
            .await
            .unwrap()
    );
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!((b.status, b.attempts), (SampleStatus::Queued, 0));
    assert!(repo.due_sample_batches(t0, 10).await.unwrap().is_empty());
    let t1 = t0 + Duration::seconds(5);
    assert!(repo.claim_sample_batch(a.id, 0, t1).await.unwrap());

    assert!(
        repo.record_sample_instance(a.id, 1, &instance(1), t1)
            .await
            .unwrap()
    );
    assert!(
        !repo.unclaim_sample_batch(a.id, 1, t1, t1).await.unwrap(),
        "a launched attempt is not undone"
    );
    let open = repo.open_sample_instances().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].instance, Some(instance(1)));

    assert!(
        !repo.complete_sample_batch(a.id, 2, t1).await.unwrap(),
        "another attempt's result"
    );
    assert!(repo.complete_sample_batch(a.id, 1, t1).await.unwrap());
    assert!(!repo.complete_sample_batch(a.id, 1, t1).await.unwrap());
    assert_eq!(
        repo.fail_sample_attempt(a.id, 1, "late", true, t1)
            .await
            .unwrap(),
        None,
        "a report after the result changes nothing"
    );
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!(b.status, SampleStatus::Completed);
    assert_eq!(b.finished_at, Some(t1));
    assert_eq!(b.last_error, None);

    // Still to be ended until confirmed gone (by its own provider id only).
    assert_eq!(repo.open_sample_instances().await.unwrap().len(), 1);
    repo.record_sample_instance_gone(a.id, "local:9:9", t1)
        .await
        .unwrap();
    assert_eq!(repo.open_sample_instances().await.unwrap().len(), 1);
    repo.record_sample_instance_gone(a.id, "local:1:1", t1)
        .await
        .unwrap();
    assert!(repo.open_sample_instances().await.unwrap().is_empty());
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!(b.instance_gone_at, Some(t1));
}

pub async fn failed_sample_attempts_back_off_then_fail(repo: Repo) {
    let (u, l) = lora(&repo).await;
    let t0 = now();
    let a = new_batch(l, u, 1);
    inserted(repo.insert_sample_batch(&a, 2, t0).await.unwrap());

    assert!(repo.claim_sample_batch(a.id, 0, t0).await.unwrap());
    repo.record_sample_instance(a.id, 1, &instance(1), t0)
        .await
        .unwrap();
    assert_eq!(
        repo.fail_sample_attempt(a.id, 1, "render failed", true, t0)
            .await
            .unwrap(),
        Some(SampleStatus::Queued)
    );
    assert_eq!(
        repo.fail_sample_attempt(a.id, 1, "again", true, t0)
            .await
            .unwrap(),
        None,
        "counted once"
    );
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!(b.next_attempt_at, t0 + Duration::seconds(10));
    assert_eq!(b.last_error.as_deref(), Some("render failed"));
    // Not due before the backoff, nor while the first instance may still run.
    assert!(
        repo.due_sample_batches(t0 + Duration::seconds(9), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let t1 = t0 + Duration::seconds(10);
    assert!(repo.due_sample_batches(t1, 10).await.unwrap().is_empty());
    assert!(!repo.claim_sample_batch(a.id, 1, t1).await.unwrap());
    repo.record_sample_instance_gone(a.id, "local:1:1", t1)
        .await
        .unwrap();
    assert_eq!(repo.due_sample_batches(t1, 10).await.unwrap().len(), 1);
    assert!(repo.claim_sample_batch(a.id, 1, t1).await.unwrap());
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!((b.attempts, b.instance.clone()), (2, None));
    assert_eq!(
        repo.fail_sample_attempt(a.id, 2, "render failed 2", true, t1)
            .await
            .unwrap(),
        Some(SampleStatus::Queued)
    );
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!(b.next_attempt_at, t1 + Duration::seconds(40));

    let t2 = t1 + Duration::seconds(40);
    assert!(repo.claim_sample_batch(a.id, 2, t2).await.unwrap());
    assert_eq!(
        repo.fail_sample_attempt(a.id, 3, "render failed 3", true, t2)
            .await
            .unwrap(),
        Some(SampleStatus::Failed)
    );
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!(b.status, SampleStatus::Failed);
    assert_eq!(b.attempts, 3);
    assert_eq!(b.finished_at, Some(t2));
    assert_eq!(b.last_error.as_deref(), Some("render failed 3"));
    assert!(
        repo.due_sample_batches(t2 + Duration::hours(1), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A failure that cannot pass fails at once.
    let c = new_batch(l, u, 1);
    inserted(repo.insert_sample_batch(&c, 2, t2).await.unwrap());
    assert!(repo.claim_sample_batch(c.id, 0, t2).await.unwrap());
    assert_eq!(
        repo.fail_sample_attempt(c.id, 1, "bad LoRA file", false, t2)
            .await
            .unwrap(),
        Some(SampleStatus::Failed)
    );
}
