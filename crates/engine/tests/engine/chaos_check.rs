//! What every chaos test asserts once its LoRAs have ended, in one place: `chaos.rs` (in-test
//! backends) and `chaos_real.rs` (the real Replicate and Docker backends on their fakes).

use loraforge_db::BreakerTransition;
use loraforge_domain::{LoraId, TrainingStatus};

use crate::helpers::Db;

/// Whether every LoRA has ended (`completed` or `failed`).
pub async fn all_ended(db: &Db, loras: &[LoraId]) -> bool {
    for id in loras {
        if !matches!(
            db.status(*id).await,
            TrainingStatus::Completed | TrainingStatus::Failed
        ) {
            return false;
        }
    }
    true
}

/// How the LoRAs ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub completed: usize,
    pub failed: usize,
    /// Breaker transitions recorded.
    pub transitions: usize,
}

/// The invariants of a chaos run whose LoRAs have all ended: each LoRA is `completed` (exactly
/// one run trained, and no run started after it) or `failed` with a reason; every run's instance
/// is confirmed gone and its route recorded; the transitions table holds exactly the breaker
/// changes the ticks reported (`reported`), and there are some (the failures open breakers).
pub async fn check_ended(db: &Db, loras: &[LoraId], mut reported: Vec<BreakerTransition>) -> Ended {
    let (mut completed, mut failed) = (0, 0);
    for id in loras {
        let lora = db.get(*id).await;
        let runs = db.runs(*id).await;
        let trained_runs: Vec<_> = runs
            .iter()
            .filter(|r| r.outcome.as_deref() == Some("trained"))
            .collect();
        assert!(trained_runs.len() <= 1, "{id} trained twice: {runs:#?}");
        if let Some(t) = trained_runs.first() {
            assert!(
                runs.iter().all(|r| r.attempt <= t.attempt),
                "{id} ran again after training: {runs:#?}"
            );
        }
        match lora.status {
            TrainingStatus::Completed => {
                completed += 1;
                assert_eq!(trained_runs.len(), 1, "{id}: {runs:#?}");
            }
            TrainingStatus::Failed => {
                failed += 1;
                assert!(
                    lora.error.as_deref().is_some_and(|e| !e.is_empty()),
                    "{id} failed without a reason"
                );
            }
            other => panic!("{id} ended {other}"),
        }
        assert!(
            runs.iter().all(|r| r.is_instance_gone()),
            "{id} has a run whose instance is not confirmed gone: {runs:#?}"
        );
        assert!(runs.iter().all(|r| r.route_reason.is_some()));
    }
    let mut table = db.repo.breaker_transitions(None, 100_000).await.unwrap();
    table.reverse();
    // One tick's transitions come from concurrent launches: reported in the order they finished,
    // numbered in the order they committed.
    reported.sort_by_key(|t| t.id);
    assert_eq!(
        table, reported,
        "the transitions table is what the breaker did"
    );
    assert!(!table.is_empty(), "30 % failures open breakers");
    Ended {
        completed,
        failed,
        transitions: table.len(),
    }
}
