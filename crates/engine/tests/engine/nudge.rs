//! A provider's webhook nudges the engine (`Engine::nudge`): the backend's runs are observed at the
//! next tick instead of after its `observe_every`, which then counts from that observation. A
//! webhook that landed on another replica reaches this engine through the store's nudges
//! (`NudgeStore`), read at every tick.

use std::sync::Arc;
use std::time::Duration;

use loraforge_domain::{Clock, LoraId};
use loraforge_engine::{Engine, Observed, TrainingBackend};

use crate::helpers::*;

/// Starts `id` on `provider` and lets the engine look once; then the training ends on the
/// provider, and polling alone would see it only a minute after that look.
async fn end_unseen(db: &Db, engine: &Engine, provider: &Scripted, id: LoraId) {
    assert_eq!(engine.tick().await.unwrap().started, [id]);
    // The engine's first look at the backend is not held back.
    db.advance(Duration::from_secs(1));
    assert_eq!(engine.tick().await.unwrap().watched, [id]);
    assert_eq!(provider.observes(), 1);
    provider.set(
        id,
        Observed::Ended {
            outcome: "provider_failed",
            reason: Some("the GPU host died".into()),
            gone: true,
        },
    );
    db.advance(Duration::from_secs(5));
    engine.tick().await.unwrap();
    assert_eq!(provider.observes(), 1, "within observe_every: not asked");
    assert!(db.run(id).await.outcome.is_none());
}

async fn a_nudge_makes_the_next_tick_observe_the_backend(db: Db) {
    let u = db.user().await;
    let id = db.lora(u, "Nudged", 0).await;
    let provider = Scripted::observed_every("replicate", 4, Duration::from_secs(60));
    let other = Scripted::new("runpod", 4);
    let engine = db.engine(
        vec![
            provider.clone() as Arc<dyn TrainingBackend>,
            other.clone() as Arc<dyn TrainingBackend>,
        ],
        settings("e1"),
    );
    end_unseen(&db, &engine, &provider, id).await;

    // Nudging another backend, or one not configured, changes nothing here.
    engine.nudge("runpod");
    engine.nudge("no-such-backend");
    db.advance(Duration::from_secs(1));
    engine.tick().await.unwrap();
    assert_eq!(provider.observes(), 1);

    // The webhook arrives: the next tick observes, 7 s after the last look, and settles the run.
    engine.nudge("replicate");
    let report = engine.tick().await.unwrap();
    assert_eq!(provider.observes(), 2);
    assert_eq!(
        db.runs(id).await[0].outcome.as_deref(),
        Some("provider_failed")
    );
    assert_eq!(report.requeued, [id], "{report:?}");

    // The poll interval counts from the nudged look: 31 s later the backend (where the job's
    // next run went) has not been asked again.
    db.advance(Duration::from_secs(1));
    engine.tick().await.unwrap();
    let observed = provider.observes();
    db.advance(Duration::from_secs(30));
    engine.tick().await.unwrap();
    assert_eq!(provider.observes(), observed, "held back by observe_every");
}

/// The webhook reached another replica: it recorded the nudge in the store, and this engine — the
/// one watching the training — observes the backend at its next tick, once per nudge.
async fn a_nudge_recorded_by_another_replica_reaches_the_engine(db: Db) {
    let u = db.user().await;
    let id = db.lora(u, "Nudged elsewhere", 0).await;
    let provider = Scripted::observed_every("replicate", 4, Duration::from_secs(60));
    let engine = db.engine(
        vec![provider.clone() as Arc<dyn TrainingBackend>],
        settings("e1"),
    );
    end_unseen(&db, &engine, &provider, id).await;

    // Another replica's webhook route records the nudge; this engine was never told directly.
    db.repo
        .nudge_backend("replicate", db.clock.now())
        .await
        .unwrap();
    db.advance(Duration::from_secs(1));
    let report = engine.tick().await.unwrap();
    assert_eq!(provider.observes(), 2, "{report:?}");
    assert_eq!(
        db.runs(id).await[0].outcome.as_deref(),
        Some("provider_failed")
    );
    // The same nudge read again is not news: observe_every holds again.
    db.advance(Duration::from_secs(1));
    engine.tick().await.unwrap();
    db.advance(Duration::from_secs(1));
    engine.tick().await.unwrap();
    assert_eq!(provider.observes(), 2);
}

#[tokio::test]
async fn sqlite_a_nudge_recorded_by_another_replica_reaches_the_engine() {
    a_nudge_recorded_by_another_replica_reaches_the_engine(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_nudge_recorded_by_another_replica_reaches_the_engine() {
    a_nudge_recorded_by_another_replica_reaches_the_engine(Db::postgres().await).await;
}

#[tokio::test]
async fn sqlite_a_nudge_makes_the_next_tick_observe_the_backend() {
    a_nudge_makes_the_next_tick_observe_the_backend(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_nudge_makes_the_next_tick_observe_the_backend() {
    a_nudge_makes_the_next_tick_observe_the_backend(Db::postgres().await).await;
}
