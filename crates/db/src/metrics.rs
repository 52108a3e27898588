//! What `/metrics` shows of the database: cheap aggregates the metrics collector reads every few
//! seconds (`loraforge_server::metrics::Collector`). Every query is one indexed scan or a GROUP BY
//! over a table whose size is bounded by the work in flight, except the per-status counts and the
//! runs' totals, which read one index or table each (measured in `docs/performance.md`, M1).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::TrainingStatus;
use loraforge_domain::breaker::BreakerState;

use crate::Result;

/// One consistent-enough reading of the service's state for operators (each aggregate is read on
/// its own; they are not one transaction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpsSnapshot {
    /// LoRAs per training status; a status with none is absent.
    pub loras_by_status: Vec<(TrainingStatus, u64)>,
    /// When the oldest LoRA now `queued` was created.
    pub oldest_queued_created_at: Option<DateTime<Utc>>,
    /// Ended runs (an outcome recorded) per backend and outcome, with their seconds.
    pub ended_runs: Vec<RunTotals>,
    /// Runs whose instance is not confirmed gone, per backend.
    pub live_runs: Vec<(String, u64)>,
    /// Stored breaker states per backend (a backend without a row is closed).
    pub breakers: Vec<(String, BreakerState)>,
    /// Operator alerts per kind.
    pub alerts_by_kind: Vec<(String, u64)>,
}

/// Runs of one backend that ended with one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTotals {
    pub backend: String,
    pub outcome: String,
    pub runs: u64,
    /// Sum over the runs of `ended_at - started_at`, whole seconds.
    pub seconds: u64,
}

#[async_trait]
pub trait MetricsStore: Send + Sync {
    /// The aggregates `/metrics` shows.
    async fn ops_snapshot(&self) -> Result<OpsSnapshot>;

    /// Benchmarks only (`loraforge bench-seed --live-runs`): one ended run of 30 minutes (`trained`
    /// or `non_finite_loss`, its instance gone) for every completed or failed LoRA that has no
    /// run, and up to `live` open runs for LoRAs `training` without one. Returns how many of each.
    async fn seed_runs(&self, live: u32) -> Result<SeededRuns>;
}

/// What [`MetricsStore::seed_runs`] inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeededRuns {
    pub ended: u64,
    pub live: u64,
}
