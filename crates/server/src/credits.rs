//! Credits (seed 003): what a create reserves, and the reconciler that settles reservations once
//! their LoRA has finished. The ledger and its once-only keys are the repository's
//! (`loraforge_db::CreditStore`); this module decides when to settle.
//!
//! `reconcile_credits` is steppable (one round, `now` passed in): the maintenance loop runs it
//! every [`RECONCILE_EVERY`], and what ends a LoRA (cancel, an admin's review, the hand-off
//! failing a completed LoRA whose file is gone) calls [`settle_lora`] at once. A crash anywhere leaves either no settlement (the next round writes
//! it) or a whole one (the next round finds nothing due): never two.

use std::time::Duration;

use chrono::{DateTime, Utc};

use loraforge_db::{DbError, Repository, SettledCredits};
use loraforge_domain::credit::settlement;
use loraforge_domain::{LoraModel, MicroUsd};

/// How often the maintenance loop settles finished reservations.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// Reservations settled per round at most (the next round takes the rest).
const ROUND_LIMIT: u32 = 500;

/// What one [`reconcile_credits`] round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Completed LoRAs charged their actual cost (and their reservation released).
    pub charged: u32,
    /// Failed or cancelled LoRAs refunded.
    pub refunded: u32,
    /// LoRAs charged and then failed (their file lost) whose charge was given back.
    pub reimbursed: u32,
    /// Sum of the actual costs deducted.
    pub deducted: MicroUsd,
}

/// One round: every reservation whose LoRA has finished is settled (see
/// `CreditStore::due_reservations`: a completed LoRA only once every instance of it is gone, so
/// its cost is final).
pub async fn reconcile_credits(
    repo: &dyn Repository,
    now: DateTime<Utc>,
) -> Result<ReconcileReport, DbError> {
    let mut report = ReconcileReport::default();
    for due in repo.due_reservations(ROUND_LIMIT).await? {
        let Some(s) = settlement(due.status) else {
            continue;
        };
        let settled = repo.settle_reservation(due.lora_id, s, now).await?;
        count(&mut report, settled);
    }
    Ok(report)
}

/// Settles `lora`'s reservation now if it failed or was cancelled: refunded, or its charge
/// reimbursed when it failed after completing (a completed LoRA waits for the reconciler, which
/// knows when its cost is final). Failures are logged: the reconciler retries.
pub async fn settle_lora(repo: &dyn Repository, lora: &LoraModel, now: DateTime<Utc>) {
    let Some(s) = settlement(lora.status) else {
        return;
    };
    if s != loraforge_domain::credit::Settlement::Refund {
        return;
    }
    if let Err(e) = repo.settle_reservation(lora.id, s, now).await {
        tracing::warn!(lora = %lora.id, error = %e, "refunding credits failed; the reconciler will retry");
    }
}

fn count(report: &mut ReconcileReport, settled: SettledCredits) {
    if settled.reimbursed.is_some() {
        report.reimbursed += 1;
    }
    match settled.deducted {
        Some(cost) => {
            report.charged += 1;
            report.deducted = report.deducted.saturating_add(cost);
        }
        None if settled.returned.is_some() => report.refunded += 1,
        None => {}
    }
}
