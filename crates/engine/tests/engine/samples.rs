//! Sample batches in the tick: launched on a backend that runs sample work with a sample token,
//! an instance that ends without a report fails its attempt (retried after 10 s, then 40 s, then
//! failed with the reason), every ended attempt's instance is ended until gone, a completed
//! batch's instance is ended as finished, and backends that cannot render are never offered one.
//! A worker not heard of within the lease fails its attempt `lease_expired` (as does a claim
//! whose launch was never recorded); the orphan sweep ends sample instances no batch owns.

use std::sync::Arc;
use std::time::Duration;

use loraforge_db::{BatchInsert, NewSampleBatch};
use loraforge_domain::samples::{PromptInput, SampleRequestInput, SampleSpec, SampleStatus};
use loraforge_domain::{LoraId, SampleBatchId, StatusEvent};
use loraforge_engine::{Ending, Observed, TrainingBackend};

use crate::helpers::*;

async fn batch(db: &Db, lora: LoraId, owner: loraforge_domain::UserId) -> SampleBatchId {
    let id = SampleBatchId::new();
    let spec = SampleSpec::parse(
        SampleRequestInput {
            prompts: vec![PromptInput {
                prompt: "zxq".into(),
                negative_prompt: None,
                seed: Some(1),
                scale: None,
            }],
            width: Some(64),
            height: Some(64),
            steps: Some(2),
        },
        id,
    )
    .unwrap();
    let new = NewSampleBatch {
        id,
        lora_id: lora,
        user_id: owner,
        spec,
    };
    match db
        .repo
        .insert_sample_batch(&new, 2, db.now())
        .await
        .unwrap()
    {
        BatchInsert::Inserted(_) => id,
        other => panic!("{other:?}"),
    }
}

/// A LoRA that will not train (cancelled), so only sample work reaches the backend.
async fn idle_lora(db: &Db) -> (LoraId, loraforge_domain::UserId) {
    let u = db.user().await;
    let id = db.lora(u, "Sampled", 0).await;
    db.repo
        .apply_event(id, StatusEvent::Cancel, Default::default(), db.now())
        .await
        .unwrap();
    (id, u.0)
}

async fn failed_attempts_are_retried_with_backoff_then_fail(db: Db) {
    let (lora, owner) = idle_lora(&db).await;
    let b = batch(&db, lora, owner).await;
    let no_samples = Scripted::new("replicate-like", 4);
    let gpu = Scripted::with_samples("gpu", 4);
    let engine = db
        .engine(
            vec![
                no_samples.clone() as Arc<dyn TrainingBackend>,
                gpu.clone() as Arc<dyn TrainingBackend>,
            ],
            settings("e1"),
        )
        .with_worker_tokens(Arc::new(FixedTokens));

    let r = engine.tick().await.unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.samples_started, [b]);
    assert_eq!(no_samples.launch_calls(), 0, "never offered sample work");
    let (pid, inst) = gpu.latest().unwrap();
    assert_eq!(inst.token, format!("sample-token-{b}-1"));
    assert_eq!(inst.name, format!("loraforge-sample-{b}-1"));
    assert_eq!(inst.lora, lora);
    let got = db.repo.sample_batch(b).await.unwrap().unwrap();
    assert_eq!((got.status, got.attempts), (SampleStatus::Rendering, 1));
    assert_eq!(got.instance.unwrap().provider_id, pid);

    // Running: nothing changes.
    let r = engine.tick().await.unwrap();
    assert!(
        r.samples_failed.is_empty() && r.samples_started.is_empty(),
        "{r:?}"
    );

    // The worker died without a word: the backend's account fails the attempt.
    gpu.set_instance(
        &pid,
        Observed::Ended {
            outcome: "lost",
            reason: Some("the worker was killed".into()),
            gone: true,
        },
    );
    let r = engine.tick().await.unwrap();
    assert_eq!(r.samples_failed, [b], "{r:?}");
    assert_eq!(r.samples_gone, [b]);
    let got = db.repo.sample_batch(b).await.unwrap().unwrap();
    assert_eq!(got.status, SampleStatus::Queued);
    assert_eq!(
        got.last_error.as_deref(),
        Some("lost: the worker was killed")
    );
    assert_eq!(gpu.launches(), 1);

    // Not before the backoff.
    db.advance(Duration::from_secs(9));
    engine.tick().await.unwrap();
    assert_eq!(gpu.launches(), 1);
    db.advance(Duration::from_secs(1));
    let r = engine.tick().await.unwrap();
    assert_eq!(r.samples_started, [b]);
    let (pid2, inst2) = gpu.latest().unwrap();
    assert_eq!(inst2.token, format!("sample-token-{b}-2"));

    // Ended but not gone: failed, and ended until the backend confirms it.
    gpu.set_instance(
        &pid2,
        Observed::Ended {
            outcome: "sample_failed",
            reason: Some("image 0 could not be rendered".into()),
            gone: false,
        },
    );
    engine.tick().await.unwrap();
    assert!(gpu.terminates().contains(&(pid2.clone(), Ending::Stop)));
    assert!(gpu.is_terminated(&pid2));
    db.advance(Duration::from_secs(40));
    engine.tick().await.unwrap();
    let (pid3, _) = gpu.latest().unwrap();
    assert_ne!(pid3, pid2);
    gpu.set_instance(
        &pid3,
        Observed::Ended {
            outcome: "sample_failed",
            reason: Some("again".into()),
            gone: true,
        },
    );
    engine.tick().await.unwrap();
    let got = db.repo.sample_batch(b).await.unwrap().unwrap();
    assert_eq!((got.status, got.attempts), (SampleStatus::Failed, 3));
    assert_eq!(got.last_error.as_deref(), Some("sample_failed: again"));
    assert!(got.finished_at.is_some());
    db.advance(Duration::from_secs(3600));
    engine.tick().await.unwrap();
    assert_eq!(gpu.launches(), 3, "no fourth attempt");
    assert!(db.repo.watched_sample_batches().await.unwrap().is_empty());
}

async fn a_completed_batch_has_its_instance_ended(db: Db) {
    let (lora, owner) = idle_lora(&db).await;
    let b = batch(&db, lora, owner).await;
    let gpu = Scripted::with_samples("gpu", 1);
    let engine = db
        .engine(
            vec![gpu.clone() as Arc<dyn TrainingBackend>],
            settings("e1"),
        )
        .with_worker_tokens(Arc::new(FixedTokens));
    engine.tick().await.unwrap();
    let (pid, _) = gpu.latest().unwrap();
    // A second batch waits: the one slot is taken.
    let b2 = batch(&db, lora, owner).await;
    engine.tick().await.unwrap();
    assert_eq!(gpu.launches(), 1);
    // The worker reported its images.
    assert!(db.repo.complete_sample_batch(b, 1, db.now()).await.unwrap());
    let r = engine.tick().await.unwrap();
    assert!(
        gpu.terminates().contains(&(pid.clone(), Ending::Finished)),
        "{r:?}"
    );
    assert_eq!(r.samples_gone, [b]);
    assert_eq!(
        db.repo.sample_batch(b).await.unwrap().unwrap().status,
        SampleStatus::Completed
    );
    // The slot is free again.
    engine.tick().await.unwrap();
    assert_eq!(gpu.launches(), 2);
    assert_eq!(
        db.repo.sample_batch(b2).await.unwrap().unwrap().status,
        SampleStatus::Rendering
    );
}

async fn a_silent_worker_fails_its_attempt_within_the_lease(db: Db) {
    let (lora, owner) = idle_lora(&db).await;
    let b = batch(&db, lora, owner).await;
    let gpu = Scripted::with_samples("gpu", 4);
    let engine = db
        .engine(
            vec![gpu.clone() as Arc<dyn TrainingBackend>],
            settings("e1"),
        )
        .with_worker_tokens(Arc::new(FixedTokens));
    let lease = settings("e1").lease;
    assert_eq!(lease, Duration::from_secs(300));
    engine.tick().await.unwrap();
    let (pid, _) = gpu.latest().unwrap();

    // Not heard of yet, its instance running: starting (a pod pulls its image), not silent.
    db.advance(Duration::from_secs(600));
    let r = engine.tick().await.unwrap();
    assert!(r.samples_failed.is_empty(), "{r:?}");
    // The worker fetches its batch, then its heartbeats keep the attempt.
    assert!(
        db.repo
            .record_sample_heartbeat(b, 1, db.now())
            .await
            .unwrap()
    );
    db.advance(Duration::from_secs(240));
    assert!(
        db.repo
            .record_sample_heartbeat(b, 1, db.now())
            .await
            .unwrap()
    );
    db.advance(lease);
    let r = engine.tick().await.unwrap();
    assert!(r.samples_failed.is_empty(), "exactly the lease: {r:?}");
    assert!(!gpu.is_terminated(&pid));

    // One second more without a word: failed, its instance stopped, retried after the backoff.
    db.advance(Duration::from_secs(1));
    let r = engine.tick().await.unwrap();
    assert_eq!(r.samples_failed, [b], "{r:?}");
    assert_eq!(r.samples_gone, [b]);
    assert!(gpu.terminates().contains(&(pid.clone(), Ending::Stop)));
    let got = db.repo.sample_batch(b).await.unwrap().unwrap();
    assert_eq!((got.status, got.attempts), (SampleStatus::Queued, 1));
    let error = got.last_error.unwrap();
    assert!(
        error.starts_with("lease_expired: the worker was last heard of at"),
        "{error}"
    );
    assert!(
        !db.repo
            .record_sample_heartbeat(b, 1, db.now())
            .await
            .unwrap(),
        "a late heartbeat of the failed attempt is refused"
    );
    db.advance(Duration::from_secs(10));
    let r = engine.tick().await.unwrap();
    assert_eq!(r.samples_started, [b]);
    assert_eq!(gpu.launches(), 2);
}

async fn a_claim_whose_launch_was_never_recorded_is_given_up(db: Db) {
    let (lora, owner) = idle_lora(&db).await;
    let b = batch(&db, lora, owner).await;
    // Another engine claimed attempt 1 and stopped before it recorded a launch.
    assert!(db.repo.claim_sample_batch(b, 0, db.now()).await.unwrap());
    let gpu = Scripted::with_samples("gpu", 4);
    let engine = db
        .engine(
            vec![gpu.clone() as Arc<dyn TrainingBackend>],
            settings("e1"),
        )
        .with_worker_tokens(Arc::new(FixedTokens));
    db.advance(Duration::from_secs(300));
    let r = engine.tick().await.unwrap();
    assert!(
        r.samples_failed.is_empty() && r.samples_started.is_empty(),
        "{r:?}"
    );
    db.advance(Duration::from_secs(1));
    let r = engine.tick().await.unwrap();
    assert_eq!(r.samples_failed, [b], "{r:?}");
    let got = db.repo.sample_batch(b).await.unwrap().unwrap();
    assert_eq!((got.status, got.attempts), (SampleStatus::Queued, 1));
    assert!(
        got.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("lease_expired: the attempt was claimed at")),
        "{got:?}"
    );
    // Nothing to end; attempt 2 starts after the backoff.
    assert!(gpu.terminates().is_empty());
    db.advance(Duration::from_secs(10));
    let r = engine.tick().await.unwrap();
    assert_eq!(r.samples_started, [b]);
    assert_eq!(gpu.latest().unwrap().1.attempt, 2);
}

async fn the_sweep_ends_sample_instances_no_batch_owns(db: Db) {
    let (lora, owner) = idle_lora(&db).await;
    let (lora2, owner2) = idle_lora(&db).await;
    let live = batch(&db, lora, owner).await;
    let pods = Scripted::with_samples("pods", 8);
    let engine = db
        .engine(
            vec![pods.clone() as Arc<dyn TrainingBackend>],
            settings("e1"),
        )
        .with_worker_tokens(Arc::new(FixedTokens));
    engine.tick().await.unwrap();
    let (live_pod, inst) = pods.latest().unwrap();
    assert_eq!(inst.name, format!("loraforge-sample-{live}-1"));

    // A finished batch whose pod was recorded gone but lingers (a provider's lie, a crash).
    let done = batch(&db, lora, owner).await;
    engine.tick().await.unwrap();
    let (done_pod, _) = pods.latest().unwrap();
    assert!(
        db.repo
            .complete_sample_batch(done, 1, db.now())
            .await
            .unwrap()
    );
    db.repo
        .record_sample_instance_gone(done, &done_pod, db.now())
        .await
        .unwrap();
    // A launch in progress: attempt 1 of another batch claimed, its pod made, not yet recorded.
    let launching = batch(&db, lora2, owner2).await;
    assert!(
        db.repo
            .claim_sample_batch(launching, 0, db.now())
            .await
            .unwrap()
    );
    let launching_pod = pods.plant(&format!("loraforge-sample-{launching}-1"));
    // Left by a crash: a batch nobody knows, and a second pod of the live batch's attempt.
    let unknown = pods.plant(&format!("loraforge-sample-{}-1", SampleBatchId::new()));
    let twin = pods.plant(&format!("loraforge-sample-{live}-1"));
    let stale = pods.plant(&format!("loraforge-sample-{live}-7"));

    let report = engine.sweep_orphans().await;
    assert!(report.swept && report.errors.is_empty(), "{report:?}");
    assert_eq!(report.seen, 6, "{report:?}");
    let mut ended = report.terminated.clone();
    ended.sort();
    let mut expected = vec![
        done_pod.clone(),
        unknown.clone(),
        twin.clone(),
        stale.clone(),
    ];
    expected.sort();
    assert_eq!(ended, expected, "{report:?}");
    for kept in [&live_pod, &launching_pod] {
        assert!(!pods.is_terminated(kept), "{kept}");
    }
    for gone in &expected {
        assert!(pods.is_terminated(gone), "{gone}");
    }
}

#[tokio::test]
async fn sqlite_failed_sample_attempts_are_retried_with_backoff_then_fail() {
    failed_attempts_are_retried_with_backoff_then_fail(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_failed_sample_attempts_are_retried_with_backoff_then_fail() {
    failed_attempts_are_retried_with_backoff_then_fail(Db::postgres().await).await;
}

#[tokio::test]
async fn sqlite_a_completed_sample_batch_has_its_instance_ended() {
    a_completed_batch_has_its_instance_ended(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_completed_sample_batch_has_its_instance_ended() {
    a_completed_batch_has_its_instance_ended(Db::postgres().await).await;
}

#[tokio::test]
async fn sqlite_a_silent_sample_worker_fails_its_attempt_within_the_lease() {
    a_silent_worker_fails_its_attempt_within_the_lease(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_silent_sample_worker_fails_its_attempt_within_the_lease() {
    a_silent_worker_fails_its_attempt_within_the_lease(Db::postgres().await).await;
}

#[tokio::test]
async fn sqlite_a_sample_claim_whose_launch_was_never_recorded_is_given_up() {
    a_claim_whose_launch_was_never_recorded_is_given_up(Db::sqlite().await).await;
}

#[tokio::test]
async fn sqlite_the_sweep_ends_sample_instances_no_batch_owns() {
    the_sweep_ends_sample_instances_no_batch_owns(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_the_sweep_ends_sample_instances_no_batch_owns() {
    the_sweep_ends_sample_instances_no_batch_owns(Db::postgres().await).await;
}
