//! When every backend is refused by a gate (no trainer environment, a spent budget) or by its
//! open breaker, or is full while the others refuse, queued LoRAs wait unclaimed with a status
//! message saying why, and train once a backend is admitted again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use loraforge_domain::TrainingStatus;
use loraforge_domain::breaker::{BreakerEvent, BreakerRules, BreakerState};
use loraforge_engine::{LaunchGate, TrainingBackend};

use crate::helpers::*;

/// Refuses `pods` while `closed`, as a missing trainer environment does.
#[derive(Debug, Default)]
struct Switch {
    closed: AtomicBool,
}

impl LaunchGate for Switch {
    fn admits(&self, backend: &str, _now: DateTime<Utc>) -> Result<(), String> {
        if backend == "pods" && self.closed.load(Ordering::SeqCst) {
            Err("the trainer's Python environment is not set up".to_owned())
        } else {
            Ok(())
        }
    }
}

async fn loras_wait_with_a_reason_while_no_backend_may_train(db: Db) {
    let u = db.user().await;
    let first = db.lora(u, "First", 1).await;
    let pods = Scripted::new("pods", 4);
    let gate = Arc::new(Switch::default());
    gate.closed.store(true, Ordering::SeqCst);
    let engine = db
        .engine(
            vec![pods.clone() as Arc<dyn TrainingBackend>],
            settings("e1"),
        )
        .with_gate(gate.clone());

    for _ in 0..3 {
        let report = engine.tick().await.unwrap();
        assert!(report.started.is_empty(), "{report:?}");
        assert!(report.errors.is_empty(), "{report:?}");
    }
    let lora = db.get(first).await;
    assert_eq!(lora.status, TrainingStatus::Queued, "waiting, not failed");
    let message = lora.status_message.clone().unwrap_or_default();
    assert!(
        message.contains("no backend can train") && message.contains("Python environment"),
        "{message}"
    );
    assert_eq!(pods.launches(), 0);
    assert!(db.runs(first).await.is_empty(), "no attempt was used");

    // A LoRA created while refused is told too, after the re-explain interval.
    let second = db.lora(u, "Second", 2).await;
    engine.tick().await.unwrap();
    db.advance(std::time::Duration::from_secs(16));
    engine.tick().await.unwrap();
    assert!(
        db.get(second)
            .await
            .status_message
            .unwrap_or_default()
            .contains("no backend can train")
    );

    // The environment appears: both start, on their first attempt.
    gate.closed.store(false, Ordering::SeqCst);
    let report = engine.tick().await.unwrap();
    let mut started = report.started.clone();
    started.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(started, expected, "{report:?}");
    assert_eq!(db.run(first).await.attempt, 1);
}

#[tokio::test]
async fn sqlite_loras_wait_with_a_reason_while_no_backend_may_train() {
    loras_wait_with_a_reason_while_no_backend_may_train(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_loras_wait_with_a_reason_while_no_backend_may_train() {
    loras_wait_with_a_reason_while_no_backend_may_train(Db::postgres().await).await;
}

/// One backend's breaker open, the other full: the queued LoRA is told both (before, "full" made
/// the engine say nothing); while every backend is merely full, nothing is said.
async fn a_lora_waiting_on_an_open_breaker_and_a_full_backend_is_told_both(db: Db) {
    let first = db.lora(db.user().await, "First", 1).await;
    let runpod = Scripted::new("runpod", 2);
    let replicate = Scripted::new("replicate", 1);
    let engine = db.engine(
        vec![
            runpod.clone() as Arc<dyn TrainingBackend>,
            replicate.clone() as Arc<dyn TrainingBackend>,
        ],
        settings("e1"),
    );
    // Busy, not refused: runpod takes two, replicate one; the fourth waits without a message.
    let second = db.lora(db.user().await, "Second", 2).await;
    let third = db.lora(db.user().await, "Third", 3).await;
    let fourth = db.lora(db.user().await, "Fourth", 4).await;
    let report = engine.tick().await.unwrap();
    assert_eq!(report.started.len(), 3, "{report:?}");
    assert_eq!(db.status(fourth).await, TrainingStatus::Queued);
    assert_eq!(db.get(fourth).await.status_message, None, "merely busy");

    // runpod's runs end and its breaker is forced open; replicate is still full.
    for id in [first, second, third] {
        if runpod.instance(id).is_some() {
            db.report_trained(id).await;
        }
    }
    db.repo
        .step_breaker(
            "runpod",
            &BreakerEvent::Force {
                to: BreakerState::Open,
                reason: "provider down".into(),
                by: "admin".into(),
            },
            &BreakerRules::default(),
            db.now(),
        )
        .await
        .unwrap();
    db.advance(std::time::Duration::from_secs(1));
    let report = engine.tick().await.unwrap();
    assert!(report.started.is_empty(), "{report:?}");
    let message = db.get(fourth).await.status_message.unwrap_or_default();
    assert!(
        message.contains("no backend can train")
            && message.contains("runpod: circuit breaker open")
            && message.contains("replicate: full (1 runs at once)"),
        "{message}"
    );
    assert_eq!(db.status(fourth).await, TrainingStatus::Queued);
    assert_eq!(runpod.launches(), 2, "nothing launched on the open breaker");

    // replicate's run ends: the LoRA goes there.
    let on_replicate = [first, second, third]
        .into_iter()
        .find(|id| replicate.instance(*id).is_some())
        .unwrap();
    db.report_trained(on_replicate).await;
    db.advance(std::time::Duration::from_secs(1));
    // Its run is settled and its instance ended, then the room is used (this tick or the next).
    tick_until(
        &engine,
        "the waiting LoRA to start",
        async |r: &[loraforge_engine::TickReport]| r.iter().any(|r| r.started.contains(&fourth)),
    )
    .await;
    assert_eq!(db.run(fourth).await.backend, "replicate");
}

#[tokio::test]
async fn sqlite_a_lora_waiting_on_an_open_breaker_and_a_full_backend_is_told_both() {
    a_lora_waiting_on_an_open_breaker_and_a_full_backend_is_told_both(Db::sqlite().await).await;
}

#[tokio::test]
async fn postgres_a_lora_waiting_on_an_open_breaker_and_a_full_backend_is_told_both() {
    a_lora_waiting_on_an_open_breaker_and_a_full_backend_is_told_both(Db::postgres().await).await;
}
