//! Credits (seed 003): a user's balance is an append-only ledger of entries in micro-dollars.
//!
//! Every entry's `amount` is its signed effect on what the user may still spend (`available`):
//! `grant` +, `adjust` ±, `reserve` − (the quote held at create), `release` + (the reservation
//! given back once the actual cost is known), `deduct` − (the actual cost), `refund` + (the
//! reservation given back in full when training failed or was cancelled). So
//! `available = Σ amount`, `reserved = −Σ amount over reserve/release/refund` and
//! `balance = available + reserved` (what the user has, held or not). A LoRA has at most one
//! entry of each of `reserve`, `release`, `deduct`, `refund` (a unique key), so a settlement
//! that runs twice charges once.
//!
//! A completed LoRA is charged its actual training cost even above its reservation (the GPU time
//! was spent); the balance may then go below zero, and no create is accepted until it is topped
//! up above the next quote.

use serde::Serialize;

use crate::TrainingStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    Grant,
    Adjust,
    Reserve,
    Release,
    Deduct,
    Refund,
}

impl CreditKind {
    pub const ALL: [CreditKind; 6] = [
        CreditKind::Grant,
        CreditKind::Adjust,
        CreditKind::Reserve,
        CreditKind::Release,
        CreditKind::Deduct,
        CreditKind::Refund,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CreditKind::Grant => "grant",
            CreditKind::Adjust => "adjust",
            CreditKind::Reserve => "reserve",
            CreditKind::Release => "release",
            CreditKind::Deduct => "deduct",
            CreditKind::Refund => "refund",
        }
    }

    pub fn parse(s: &str) -> Option<CreditKind> {
        CreditKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Entries of this kind belong to one LoRA and exist at most once per LoRA.
    pub fn per_lora(self) -> bool {
        !matches!(self, CreditKind::Grant | CreditKind::Adjust)
    }
}

/// What an open reservation becomes once its LoRA is where `status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Trained and published: deduct the actual cost, release the reservation.
    Charge,
    /// Failed or cancelled: refund the reservation in full.
    Refund,
}

/// `None` while the LoRA may still train (its reservation stays open).
pub fn settlement(status: TrainingStatus) -> Option<Settlement> {
    match status {
        TrainingStatus::Completed => Some(Settlement::Charge),
        TrainingStatus::Failed | TrainingStatus::Cancelled => Some(Settlement::Refund),
        TrainingStatus::Pending
        | TrainingStatus::Queued
        | TrainingStatus::Training
        | TrainingStatus::Validating => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_only_grants_and_adjustments_are_free_of_a_lora() {
        for k in CreditKind::ALL {
            assert_eq!(CreditKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(CreditKind::parse("bonus"), None);
        let free: Vec<_> = CreditKind::ALL
            .into_iter()
            .filter(|k| !k.per_lora())
            .collect();
        assert_eq!(free, [CreditKind::Grant, CreditKind::Adjust]);
    }

    #[test]
    fn only_terminal_statuses_settle() {
        use TrainingStatus::*;
        for (status, want) in [
            (Pending, None),
            (Queued, None),
            (Training, None),
            (Validating, None),
            (Completed, Some(Settlement::Charge)),
            (Failed, Some(Settlement::Refund)),
            (Cancelled, Some(Settlement::Refund)),
        ] {
            assert_eq!(settlement(status), want, "{status:?}");
        }
    }
}
