//! Starts that fail: retryable ones are retried after 2 s, 4 s and 8 s of the injected clock
//! (stored in the database, no sleeping), then the job fails; others fail at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::{Clock, ManualClock, TrainingStatus};
use loraforge_engine::{BackendError, JobSpec, RunId, RunState, TrainingBackend};

use crate::helpers::*;

/// A backend whose starts fail with a retryable error (say a provider's quota), recording when
/// the engine tried. A stand-in for a remote provider; the engine's retry policy is under test.
#[derive(Debug)]
struct Unavailable {
    clock: Arc<ManualClock>,
    tries: Mutex<Vec<DateTime<Utc>>>,
}

#[async_trait]
impl TrainingBackend for Unavailable {
    fn name(&self) -> &str {
        "unavailable"
    }
    fn capacity(&self) -> usize {
        1
    }
    async fn start(&self, _spec: &JobSpec) -> Result<RunId, BackendError> {
        self.tries.lock().unwrap().push(self.clock.now());
        Err(BackendError::Transient("no GPU available right now".into()))
    }
    async fn status(&self, _run: &RunId) -> Result<RunState, BackendError> {
        Ok(RunState::Unknown)
    }
    async fn cancel(&self, _run: &RunId) -> Result<(), BackendError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_retryable_start_failure_is_retried_at_2_4_8_s_then_fails() {
    let db = Db::sqlite().await;
    let u = db.user().await;
    let id = db.lora(u, "Unlucky", 0).await;
    let backend = Arc::new(Unavailable { clock: db.clock.clone(), tries: Mutex::new(Vec::new()) });
    let engine = db.engine(vec![backend.clone() as Arc<dyn TrainingBackend>], settings("e1"));
    let t0 = db.now();

    // One tick per simulated second for 20 s.
    let mut failed_at = None;
    for second in 0..=20 {
        let report = engine.tick().await.unwrap();
        if report.failed.contains(&id) {
            failed_at = Some(second);
        }
        db.advance(Duration::from_secs(1));
    }
    let offsets: Vec<i64> = backend.tries.lock().unwrap().iter().map(|t| (*t - t0).num_seconds()).collect();
    assert_eq!(offsets, [0, 2, 6, 14]);
    assert_eq!(failed_at, Some(14));
    let lora = db.get(id).await;
    assert_eq!(lora.status, TrainingStatus::Failed);
    assert_eq!(
        lora.error.as_deref(),
        Some("training could not start after 4 attempts: the run could not start for now: no GPU available right now")
    );
}
