//! Credits and quotes in the database: the append-only credit ledger (`0009_credits.sql`,
//! `domain::credit`) and the finished runs quotes learn from. A trait of its own, a supertrait of
//! [`crate::Repository`], implemented by both engines (`sqlite/credits.rs`,
//! `postgres/credits.rs`).
//!
//! Contracts (the conformance suite checks them on both engines):
//! - the ledger is the truth: balance, reserved and available are sums of its entries;
//! - a create with [`crate::NewLora::reserve`] reserves in the same transaction as the LoRA's
//!   insert, under the per-user lock, or fails with `InsufficientCredits` and inserts nothing;
//! - [`CreditStore::settle_reservation`] writes each of a LoRA's release / deduct / refund at most
//!   once, whatever crashes or repeats around it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::credit::{CreditKind, Settlement};
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

/// A reservation with neither release nor refund yet whose LoRA has finished.
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
    /// it confirmed gone, so its cost is final), failed or cancelled; oldest first, at most
    /// `limit`.
    async fn due_reservations(&self, limit: u32) -> Result<Vec<DueReservation>>;

    /// Settles the LoRA's reservation in one transaction: `Charge` deducts the LoRA's
    /// `training_cost` and releases the reservation, `Refund` refunds it. Entries already written
    /// (by an earlier call, another replica) are not written again; nothing is written when the
    /// LoRA has no reservation.
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
        CreditKind::Grant | CreditKind::Adjust => "by an admin",
    }
}

/// The entries a settlement writes, as (kind, signed amount), given the reservation and the
/// LoRA's actual cost.
pub(crate) fn settlement_entries(
    settlement: Settlement,
    reserved: MicroUsd,
    cost: MicroUsd,
) -> Vec<(CreditKind, MicroUsd)> {
    match settlement {
        Settlement::Charge => vec![
            (CreditKind::Deduct, MicroUsd(-cost.0)),
            (CreditKind::Release, reserved),
        ],
        Settlement::Refund => vec![(CreditKind::Refund, reserved)],
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
