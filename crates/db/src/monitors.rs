//! What the operator monitors (`loraforge_server::monitors::run_monitors`) read: counts and sums
//! over a window, and runs whose instance would not end. Read-only.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::Result;

/// Totals for the monitors' thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonitorStats {
    /// LoRAs that became `completed` or `failed` since `day_since` (from the status log).
    pub finished_in_day: u64,
    /// Of those, the ones that became `failed`.
    pub failed_in_day: u64,
    /// LoRAs completed since `month_start`, and the sum of their `training_cost_micros`.
    pub completed_in_month: u64,
    pub cost_in_month_micros: i64,
    /// LoRAs created since `month_start`.
    pub created_in_month: u64,
    /// Bytes of every stored LoRA file (`lora_models.file_size` with a storage key).
    pub stored_lora_bytes: u64,
}

/// A run whose instance is not confirmed gone after repeated failed terminations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckCleanup {
    pub run_id: String,
    pub backend: String,
    pub provider_id: String,
    pub terminate_failures: u32,
}

#[async_trait]
pub trait MonitorStore: Send + Sync {
    async fn monitor_stats(
        &self,
        day_since: DateTime<Utc>,
        month_start: DateTime<Utc>,
    ) -> Result<MonitorStats>;

    /// Runs not confirmed gone with at least `min_failures` failed terminations.
    async fn stuck_cleanups(&self, min_failures: u32) -> Result<Vec<StuckCleanup>>;
}

pub(crate) const FINISHED_SQL: &str = "SELECT COUNT(DISTINCT lora_id) FROM lora_events \
     WHERE kind = 'status' AND status IN ('completed', 'failed') AND at >= $1";
pub(crate) const FAILED_SQL: &str = "SELECT COUNT(DISTINCT lora_id) FROM lora_events \
     WHERE kind = 'status' AND status = 'failed' AND at >= $1";
pub(crate) const CREATED_SQL: &str = "SELECT COUNT(*) FROM lora_models WHERE created_at >= $1";
pub(crate) const STUCK_SQL: &str = "SELECT id, backend, provider_id, terminate_failures FROM training_runs \
     WHERE instance_gone_at IS NULL AND terminate_failures >= $1 ORDER BY id";

pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
