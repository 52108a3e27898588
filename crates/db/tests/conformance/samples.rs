//! Sample batches: insert with the per-user open limit (also under concurrency), listing a page
//! at a time, the claim / launch / complete path, failures retried with the domain's backoff
//! until failed, a stale attempt's report ignored, instances watched until confirmed gone, and
//! when each attempt's worker was last heard of.

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

    let listed = repo.sample_batches_of(l, None, 10, 0).await.unwrap();
    assert_eq!(
        listed.batches.iter().map(|b| b.id).collect::<Vec<_>>(),
        vec![b.id, a.id],
        "newest first"
    );
    assert_eq!(listed.total, 2);
    let first = repo.sample_batches_of(l, None, 1, 0).await.unwrap();
    assert_eq!((first.batches.len(), first.total), (1, 2));
    assert_eq!(
        repo.sample_batches_of(l, Some(u), 10, 0)
            .await
            .unwrap()
            .batches
            .len(),
        2
    );
    let nobody = repo
        .sample_batches_of(l, Some(UserId::new()), 10, 0)
        .await
        .unwrap();
    assert!(nobody.batches.is_empty());
    assert_eq!(nobody.total, 0);
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
    assert_eq!(
        repo.sample_batches_of(l, None, 50, 0).await.unwrap().total,
        2
    );
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
    let open = repo.watched_sample_batches().await.unwrap();
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
    assert_eq!(repo.watched_sample_batches().await.unwrap().len(), 1);
    repo.record_sample_instance_gone(a.id, "local:9:9", t1)
        .await
        .unwrap();
    assert_eq!(repo.watched_sample_batches().await.unwrap().len(), 1);
    repo.record_sample_instance_gone(a.id, "local:1:1", t1)
        .await
        .unwrap();
    assert!(repo.watched_sample_batches().await.unwrap().is_empty());
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

pub async fn sample_listings_page_newest_first(repo: Repo) {
    let (u, l) = lora(&repo).await;
    let t0 = now();
    let mut ids = Vec::new();
    // 5 batches a second apart (each completed, so the open limit does not stop them).
    for i in 0..5 {
        let b = new_batch(l, u, 1);
        let at = t0 + Duration::seconds(i);
        inserted(repo.insert_sample_batch(&b, 2, at).await.unwrap());
        assert!(repo.claim_sample_batch(b.id, 0, at).await.unwrap());
        assert!(repo.complete_sample_batch(b.id, 1, at).await.unwrap());
        ids.push(b.id);
    }
    ids.reverse();
    // Someone else's batch of the same LoRA counts only for an unfiltered listing.
    let (other, _) = lora(&repo).await;
    inserted(
        repo.insert_sample_batch(&new_batch(l, other, 1), 2, t0)
            .await
            .unwrap(),
    );
    let page = |limit, offset| {
        let repo = Arc::clone(&repo);
        async move {
            let p = repo
                .sample_batches_of(l, Some(u), limit, offset)
                .await
                .unwrap();
            (p.batches.iter().map(|b| b.id).collect::<Vec<_>>(), p.total)
        }
    };
    assert_eq!(page(2, 0).await, (ids[0..2].to_vec(), 5));
    assert_eq!(page(2, 2).await, (ids[2..4].to_vec(), 5));
    assert_eq!(page(2, 4).await, (ids[4..5].to_vec(), 5));
    assert_eq!(
        page(2, 5).await,
        (vec![], 5),
        "past the end: empty, same total"
    );
    assert_eq!(
        page(100, u64::MAX).await,
        (vec![], 5),
        "a huge offset is no error"
    );
    let all = repo.sample_batches_of(l, None, 100, 0).await.unwrap();
    assert_eq!((all.batches.len(), all.total), (6, 6));
    // Every page carries its batches' images.
    assert!(all.batches.iter().all(|b| b.images.len() == 1));
}

pub async fn sample_heartbeats_record_when_the_worker_was_heard_of(repo: Repo) {
    let (u, l) = lora(&repo).await;
    let t0 = now();
    let a = new_batch(l, u, 1);
    inserted(repo.insert_sample_batch(&a, 2, t0).await.unwrap());
    assert!(
        !repo.record_sample_heartbeat(a.id, 1, t0).await.unwrap(),
        "a queued batch has no worker"
    );
    assert!(repo.claim_sample_batch(a.id, 0, t0).await.unwrap());
    // Claimed, not launched: watched (its launch may never be recorded), not yet heard of.
    let watched = repo.watched_sample_batches().await.unwrap();
    assert_eq!(watched.iter().map(|b| b.id).collect::<Vec<_>>(), vec![a.id]);
    assert_eq!((watched[0].heard_at, watched[0].updated_at), (None, t0));
    let t1 = t0 + Duration::seconds(3);
    assert!(
        repo.record_sample_instance(a.id, 1, &instance(1), t1)
            .await
            .unwrap()
    );
    let t2 = t1 + Duration::seconds(20);
    assert!(repo.record_sample_heartbeat(a.id, 1, t2).await.unwrap());
    assert!(
        !repo.record_sample_heartbeat(a.id, 2, t2).await.unwrap(),
        "another attempt's worker"
    );
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!(b.heard_at, Some(t2));
    assert_eq!(b.updated_at, t1, "a heartbeat is not a change of state");

    // The attempt fails; the next claim starts unheard of, and a launch that lost its claim is
    // not recorded.
    assert_eq!(
        repo.fail_sample_attempt(a.id, 1, "lease_expired: silent", true, t2)
            .await
            .unwrap(),
        Some(SampleStatus::Queued)
    );
    assert!(!repo.record_sample_heartbeat(a.id, 1, t2).await.unwrap());
    repo.record_sample_instance_gone(a.id, "local:1:1", t2)
        .await
        .unwrap();
    assert!(repo.watched_sample_batches().await.unwrap().is_empty());
    let t3 = t2 + Duration::seconds(10);
    assert!(repo.claim_sample_batch(a.id, 1, t3).await.unwrap());
    let b = repo.sample_batch(a.id).await.unwrap().unwrap();
    assert_eq!((b.attempts, b.heard_at), (2, None));
    assert_eq!(
        repo.fail_sample_attempt(a.id, 2, "lease_expired: never launched", true, t3)
            .await
            .unwrap(),
        Some(SampleStatus::Queued)
    );
    assert!(
        !repo
            .record_sample_instance(a.id, 2, &instance(2), t3)
            .await
            .unwrap(),
        "the claim was given up"
    );
}
