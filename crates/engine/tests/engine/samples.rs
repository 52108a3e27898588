//! Sample batches in the tick: launched on a backend that runs sample work with a sample token,
//! an instance that ends without a report fails its attempt (retried after 10 s, then 40 s, then
//! failed with the reason), every ended attempt's instance is ended until gone, a completed
//! batch's instance is ended as finished, and backends that cannot render are never offered one.

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
    assert!(db.repo.open_sample_instances().await.unwrap().is_empty());
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
