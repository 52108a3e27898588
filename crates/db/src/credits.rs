//! Credits and quotes in the database: the append-only credit ledger (`0009_credits.sql`,
//! `domain::credit`) and the finished runs quotes learn from. A trait of its own, a supertrait of
//! [`crate::Repository`], implemented by both engines (`sqlite/credits.rs`,
//! `postgres/credits.rs`).
//!
//! Contracts (the conformance suite checks them on both engines):
//! - the ledger is the truth: balance, reserved and available are sums of its entries;
//! - a create with [`crate::NewLora::reserve`] reserves in the same transaction as the LoRA's
//!   insert, under the per-user lock, or fails with `InsufficientCredits` and inserts nothing;
//! - [`CreditStore::settle_reservation`] writes each of a LoRA's release / deduct / refund /
//!   reimburse at most once, whatever crashes, repeats or races around it, and only what the
//!   LoRA's status at that moment calls for (`domain::credit::settlement_entries`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::credit::{CreditKind, LoraCredits, Settlement};
use loraforge_domain::quote::QuoteSample;
use loraforge_domain::{LoraId, MicroUsd, TrainingStatus, UserId};

use crate::Result;

/// A user's credits, summed from the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreditSummary {
    /// Everything the user has, held for running trainings or not.
    pub balance: MicroUsd,
    /// Held by open reservations.
    pub reserved: MicroUsd,
    /// What a new create may reserve: `balance - reserved`.
    pub available: MicroUsd,
}

impl CreditSummary {
    /// From the two ledger sums (`Σ amount`, and `Σ amount` over reserve/release/refund).
    pub fn from_sums(all: i64, reservations: i64) -> Self {
        let reserved = -reservations;
        CreditSummary {
            balance: MicroUsd(all.saturating_add(reserved)),
            reserved: MicroUsd(reserved),
            available: MicroUsd(all),
        }
    }
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditEntry {
    pub id: i64,
    pub user_id: UserId,
    pub lora_id: Option<LoraId>,
    pub kind: CreditKind,
    /// Signed effect on the available balance.
    pub amount: MicroUsd,
    pub reason: String,
    /// The admin who granted or adjusted.
    pub actor: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// An admin's grant (positive) or adjustment (negative or positive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCreditGrant {
    pub user_id: UserId,
    /// `Grant` or `Adjust`.
    pub kind: CreditKind,
    pub amount: MicroUsd,
    pub reason: String,
    pub actor: Option<String>,
    pub now: DateTime<Utc>,
}

/// A reservation whose LoRA has finished and has entries due: neither release nor refund yet,
/// or charged and then failed (its file lost) without a reimbursement yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueReservation {
    pub lora_id: LoraId,
    pub user_id: UserId,
    pub reserved: MicroUsd,
    pub status: TrainingStatus,
}

/// What one [`CreditStore::settle_reservation`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SettledCredits {
    /// The actual cost deducted (`None`: no deduct written by this call).
    pub deducted: Option<MicroUsd>,
    /// The reservation released (after a deduct) or refunded.
    pub returned: Option<MicroUsd>,
    /// The charge given back: the LoRA failed after it was charged (its file was lost).
    pub reimbursed: Option<MicroUsd>,
}

impl SettledCredits {
    /// Counts one entry this settlement wrote.
    pub(crate) fn note(&mut self, kind: CreditKind, amount: MicroUsd) {
        match kind {
            CreditKind::Deduct => self.deducted = Some(MicroUsd(-amount.0)),
            CreditKind::Reimburse => self.reimbursed = Some(amount),
            _ => self.returned = Some(amount),
        }
    }
}

#[async_trait]
pub trait CreditStore: Send + Sync {
    /// The user's balance, reserved and available amounts (zero for an unknown user).
    async fn credit_summary(&self, user: UserId) -> Result<CreditSummary>;

    /// The user's ledger, newest first, `limit` entries after skipping `offset`.
    async fn credit_history(
        &self,
        user: UserId,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<CreditEntry>>;

    /// Appends an admin's grant or adjustment (`kind` must be `Grant` or `Adjust`).
    async fn add_credits(&self, grant: NewCreditGrant) -> Result<CreditEntry>;

    /// Reservations not yet released or refunded whose LoRA is completed (and every instance of
    /// it confirmed gone, so its cost is final), failed or cancelled; and those of LoRAs charged
    /// and then failed (a lost file) not yet reimbursed. Oldest first, at most `limit`.
    async fn due_reservations(&self, limit: u32) -> Result<Vec<DueReservation>>;

    /// Settles the LoRA's reservation in one transaction: `Charge` deducts the LoRA's
    /// `training_cost` and releases the reservation, `Refund` refunds it, or reimburses the
    /// charge of a LoRA that failed after it (`domain::credit::settlement_entries`). Settlements
    /// of one LoRA are serialized; entries already written (by an earlier call, another replica)
    /// are not written again; nothing is written when the LoRA has no reservation, or when its
    /// status no longer calls for `settlement` (the caller decided on an older status).
    async fn settle_reservation(
        &self,
        lora: LoraId,
        settlement: Settlement,
        now: DateTime<Utc>,
    ) -> Result<SettledCredits>;

    /// Finished runs with an outcome of `trained` and a recorded cost, for quotes: the newest
    /// `per_backend` of each backend, with the steps and resolution of their LoRA's params.
    async fn quote_samples(&self, per_backend: u32) -> Result<Vec<QuoteSample>>;
}

/// `InsufficientCredits` unless `price` fits what `summary` has available. A zero price fits any
/// balance that is not below zero.
pub(crate) fn check_reserve(summary: CreditSummary, price: MicroUsd) -> Result<()> {
    if summary.available.0 < price.0 || summary.available.0 < 0 {
        return Err(crate::DbError::InsufficientCredits { summary, price });
    }
    Ok(())
}

/// The reason written with the service's own entries.
pub(crate) fn entry_reason(kind: CreditKind) -> &'static str {
    match kind {
        CreditKind::Reserve => "the create's quote, held until training ends",
        CreditKind::Release => "the reservation, returned once the actual cost was charged",
        CreditKind::Deduct => "the actual training cost",
        CreditKind::Refund => "the reservation, returned in full: training failed or was cancelled",
        CreditKind::Reimburse => {
            "the training cost, returned: the LoRA's file was lost from storage and the LoRA failed"
        }
        CreditKind::Grant | CreditKind::Adjust => "by an admin",
    }
}

/// Both engines' due reservations (`CreditStore::due_reservations`), oldest first; `$1` is the
/// limit.
pub(crate) const DUE_RESERVATIONS: &str = "SELECT r.lora_id, r.user_id, r.amount_micros, l.training_status \
     FROM credit_entries r JOIN lora_models l ON l.id = r.lora_id \
     WHERE r.kind = 'reserve' AND ( \
       (NOT EXISTS (SELECT 1 FROM credit_entries s WHERE s.lora_id = r.lora_id \
                    AND s.kind IN ('release', 'refund')) \
        AND (l.training_status IN ('failed', 'cancelled') \
             OR (l.training_status = 'completed' AND NOT EXISTS ( \
                 SELECT 1 FROM training_runs t WHERE t.lora_id = l.id AND t.instance_gone_at IS NULL)))) \
       OR (l.training_status = 'failed' \
           AND EXISTS (SELECT 1 FROM credit_entries d WHERE d.lora_id = r.lora_id AND d.kind = 'deduct') \
           AND NOT EXISTS (SELECT 1 FROM credit_entries m WHERE m.lora_id = r.lora_id AND m.kind = 'reimburse'))) \
     ORDER BY r.id LIMIT $1";

/// What a settlement finds, read after the reservation's row is locked: the owner, the
/// reservation, the LoRA's cost and status, and its entries so far. `$1` is the LoRA.
pub(crate) const SETTLEMENT_STATE: &str = "SELECT r.user_id, r.amount_micros, l.training_cost_micros, l.training_status, \
     (SELECT COUNT(*) FROM credit_entries s WHERE s.lora_id = r.lora_id AND s.kind IN ('release', 'refund')) AS returned, \
     (SELECT -d.amount_micros FROM credit_entries d WHERE d.lora_id = r.lora_id AND d.kind = 'deduct') AS deducted, \
     (SELECT COUNT(*) FROM credit_entries m WHERE m.lora_id = r.lora_id AND m.kind = 'reimburse') AS reimbursed \
     FROM credit_entries r JOIN lora_models l ON l.id = r.lora_id WHERE r.lora_id = $1 AND r.kind = 'reserve'";

/// The columns of [`SETTLEMENT_STATE`] after the owner, decoded.
pub(crate) struct SettlementState {
    pub status: TrainingStatus,
    pub held: LoraCredits,
    pub cost: MicroUsd,
}

impl SettlementState {
    /// Decodes a [`SETTLEMENT_STATE`] row; its columns have the same types on both engines.
    pub fn from_row<R>(row: &R) -> Result<Self>
    where
        R: sqlx::Row,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        &'static str: sqlx::ColumnIndex<R>,
    {
        let reserve: i64 = row.try_get("amount_micros")?;
        let status: String = row.try_get("training_status")?;
        Ok(SettlementState {
            status: crate::common::parse_status(&status)?,
            held: LoraCredits {
                reserved: MicroUsd(-reserve),
                returned: row.try_get::<i64, _>("returned")? > 0,
                deducted: row.try_get::<Option<i64>, _>("deducted")?.map(MicroUsd),
                reimbursed: row.try_get::<i64, _>("reimbursed")? > 0,
            },
            cost: MicroUsd(row.try_get("training_cost_micros")?),
        })
    }

    /// The entries `settlement` writes now.
    pub fn entries(&self, settlement: Settlement) -> Vec<(CreditKind, MicroUsd)> {
        loraforge_domain::credit::settlement_entries(settlement, self.status, self.held, self.cost)
    }
}

/// The newest `per_backend` runs a quote learns from, as rows both engines read the same way.
pub(crate) fn quote_sample(
    backend: String,
    gpu_type: Option<String>,
    params: &serde_json::Value,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    cost: i64,
    price: Option<i64>,
) -> Option<QuoteSample> {
    let steps = u32::try_from(params.get("steps")?.as_u64()?).ok()?;
    let resolution = u32::try_from(params.get("resolution")?.as_u64()?).ok()?;
    let billed_seconds = u64::try_from((ended_at - started_at).num_seconds()).ok()?;
    Some(QuoteSample {
        backend,
        gpu_type,
        steps,
        resolution,
        billed_seconds,
        cost: MicroUsd(cost),
        price_per_hour: price.map(MicroUsd),
    })
}
