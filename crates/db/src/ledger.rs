//! The cost ledger and the system budget's state: append-only cost entries in integer
//! micro-dollars (`0008_ledger.sql`), the admin's budget override, the once-a-month budget alert
//! claims, and the reads the budget and the admin overview are computed from.
//!
//! Contracts (the conformance suite checks them on both engines):
//! - entries are only inserted, never updated or deleted; an entry whose idempotency key exists
//!   is not written again (`insert_cost_entry` answers `false`);
//! - `Repository::record_instance_gone` writes the run's `gpu` entry in the transaction that adds
//!   its cost to `training_cost_micros`, so a LoRA's `training_cost` equals the sum of its `gpu`
//!   and `validation` entries.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::budget::{CostKind, FinishedRun, RunningRun};
use loraforge_domain::{LoraId, MicroUsd, MonthlyWindow, RunId, UserId};

use crate::Result;

/// A cost to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCostEntry {
    pub lora_id: LoraId,
    pub user_id: UserId,
    /// `None` for storage.
    pub backend: Option<String>,
    pub kind: CostKind,
    /// `YYYY-MM` (`domain::budget::month_key`).
    pub month: String,
    pub amount: MicroUsd,
    pub run_id: Option<RunId>,
    /// Unique: a second write with the same key is a no-op.
    pub idempotency_key: String,
    pub created_at: DateTime<Utc>,
}

/// A recorded cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostEntry {
    pub id: i64,
    pub entry: NewCostEntry,
}

/// A month's ledger summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthTotals {
    pub total: MicroUsd,
    /// By backend (`None`: storage), by name.
    pub by_backend: Vec<(Option<String>, MicroUsd)>,
    /// By kind, by name.
    pub by_kind: Vec<(String, MicroUsd)>,
}

/// Runs as the budget sees them ([`LedgerStore::budget_runs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetRuns {
    /// Runs whose instance is not confirmed gone.
    pub running: Vec<RunningRun>,
    /// Finished runs (instance gone) since the cutoff, per backend: billed time from creation to
    /// the instance's end, and cost.
    pub history: Vec<(String, FinishedRun)>,
}

/// A LoRA with stored files ([`LedgerStore::stored_loras`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLora {
    pub lora_id: LoraId,
    pub user_id: UserId,
    pub bytes: u64,
}

/// The month's operations overview ([`LedgerStore::month_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthStats {
    /// LoRAs completed in the month.
    pub completed: u64,
    /// LoRAs failed in the month.
    pub failed: u64,
    /// Mean run time (start to end) of the month's `trained` runs, milliseconds.
    pub avg_training_millis: Option<i64>,
    /// Mean `training_cost` of the LoRAs completed in the month.
    pub avg_cost_per_completed: Option<MicroUsd>,
    /// Users with the most LoRAs created in the month, most first.
    pub loras_per_user: Vec<(UserId, u64)>,
    /// Sum of every LoRA's `usage_count`.
    pub total_uses: u64,
    /// The most used LoRAs (id, name, usage count), most first.
    pub most_used: Vec<(LoraId, String, u64)>,
    /// Open alerts: not yet acknowledged.
    pub alerts: u64,
}

#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Appends `entry` unless its idempotency key is recorded; whether it was written.
    async fn insert_cost_entry(&self, entry: &NewCostEntry) -> Result<bool>;

    /// A LoRA's entries, oldest first.
    async fn lora_cost_entries(&self, lora: LoraId) -> Result<Vec<CostEntry>>;

    /// The ledger total of `month` (`YYYY-MM`).
    async fn month_spend(&self, month: &str) -> Result<MicroUsd>;

    /// `month`'s totals by backend and by kind.
    async fn month_totals(&self, month: &str) -> Result<MonthTotals>;

    /// The budget an admin set (overrides the setting), if any.
    async fn budget_override(&self) -> Result<Option<MicroUsd>>;

    /// Sets the budget for every replica.
    async fn set_budget_override(
        &self,
        budget: MicroUsd,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Claims the alert of `level` for `month`: `true` for the first caller only.
    async fn claim_budget_alert(
        &self,
        month: &str,
        level: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Open runs, and runs whose instance ended after `history_since` (newest first, at most
    /// `history_limit`).
    async fn budget_runs(
        &self,
        history_since: DateTime<Utc>,
        history_limit: u32,
    ) -> Result<BudgetRuns>;

    /// LoRAs with a stored model file, by id after `after`, at most `limit`.
    async fn stored_loras(&self, after: Option<LoraId>, limit: u32) -> Result<Vec<StoredLora>>;

    /// The overview of `window`, with the top `top` users and LoRAs.
    async fn month_stats(&self, window: MonthlyWindow, top: u32) -> Result<MonthStats>;
}

/// How far back finished runs inform the expected cost of runs.
pub const BUDGET_HISTORY_DAYS: i64 = 30;
/// At most this many finished runs inform it.
pub const BUDGET_HISTORY_RUNS: u32 = 500;

/// The month's budget at `now`: the admin's override (else `default_budget`), the month's
/// ledger, and what running runs are expected to cost (`domain::budget::assess`). The one
/// computation behind the engine's budget gate and `GET /api/v1/admin/budget`.
pub async fn budget_status<R: LedgerStore + ?Sized>(
    repo: &R,
    default_budget: MicroUsd,
    now: DateTime<Utc>,
) -> Result<loraforge_domain::budget::BudgetStatus> {
    use loraforge_domain::budget::{BudgetInputs, assess, month_key};
    let budget = repo.budget_override().await?.unwrap_or(default_budget);
    let spent = repo.month_spend(&month_key(now)).await?;
    let runs = repo
        .budget_runs(
            now - chrono::Duration::days(BUDGET_HISTORY_DAYS),
            BUDGET_HISTORY_RUNS,
        )
        .await?;
    let mut inputs = BudgetInputs {
        budget,
        spent,
        running: runs.running,
        ..BudgetInputs::default()
    };
    for (backend, run) in runs.history {
        inputs.history.entry(backend).or_default().push(run);
    }
    Ok(assess(&inputs, now))
}
