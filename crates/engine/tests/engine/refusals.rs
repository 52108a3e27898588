//! When every backend is refused by a gate (no trainer environment, a spent budget), queued LoRAs
//! wait unclaimed with a status message saying why, and train once a backend is admitted again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use loraforge_domain::TrainingStatus;
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
