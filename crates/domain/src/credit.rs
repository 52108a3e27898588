//! Credits (seed 003): a user's balance is an append-only ledger of entries in micro-dollars.
//!
//! Every entry's `amount` is its signed effect on what the user may still spend (`available`):
//! `grant` +, `adjust` ±, `reserve` − (the quote held at create), `release` + (the reservation
//! given back once the actual cost is known), `deduct` − (the actual cost), `refund` + (the
//! reservation given back in full when training failed or was cancelled), `reimburse` + (the
//! deducted cost given back when a completed LoRA failed later: its file was lost from storage,
//! PRD 4 Scenario 8). So `available = Σ amount`, `reserved = −Σ amount over
//! reserve/release/refund` and `balance = available + reserved` (what the user has, held or
//! not). A LoRA has at most one entry of each per-LoRA kind (a unique key), so a settlement that
//! runs twice charges, refunds or reimburses once.
//!
//! A failed LoRA costs its owner nothing, whenever it failed: before it was charged the
//! reservation is refunded; after (a completed LoRA whose file is gone for good), the charge is
//! reimbursed. Either way the LoRA's entries sum to zero.
//!
//! A completed LoRA is charged its actual training cost even above its reservation (the GPU time
//! was spent); the balance may then go below zero, and no create is accepted until it is topped
//! up above the next quote.

use serde::Serialize;

use crate::{MicroUsd, TrainingStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    Grant,
    Adjust,
    Reserve,
    Release,
    Deduct,
    Refund,
    Reimburse,
}

impl CreditKind {
    pub const ALL: [CreditKind; 7] = [
        CreditKind::Grant,
        CreditKind::Adjust,
        CreditKind::Reserve,
        CreditKind::Release,
        CreditKind::Deduct,
        CreditKind::Refund,
        CreditKind::Reimburse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CreditKind::Grant => "grant",
            CreditKind::Adjust => "adjust",
            CreditKind::Reserve => "reserve",
            CreditKind::Release => "release",
            CreditKind::Deduct => "deduct",
            CreditKind::Refund => "refund",
            CreditKind::Reimburse => "reimburse",
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
    /// Failed or cancelled: refund the reservation in full; or, when the LoRA was charged
    /// already (completed, then failed: its file was lost), reimburse the charge.
    Refund,
}

/// A LoRA's per-LoRA ledger entries so far, as a settlement finds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoraCredits {
    /// What the reservation holds (positive).
    pub reserved: MicroUsd,
    /// The reservation was released or refunded.
    pub returned: bool,
    /// The actual cost charged (positive), if it was.
    pub deducted: Option<MicroUsd>,
    pub reimbursed: bool,
}

/// The entries a settlement of a LoRA in `status` writes, as (kind, signed amount), given what
/// its ledger holds and its actual training cost. Empty when there is nothing (more) to write,
/// or when `status` does not call for `settlement` (decided on an older status: a completed
/// LoRA whose file was lost meanwhile is not charged, the next round reimburses or refunds it).
pub fn settlement_entries(
    settlement: Settlement,
    status: TrainingStatus,
    held: LoraCredits,
    cost: MicroUsd,
) -> Vec<(CreditKind, MicroUsd)> {
    if self::settlement(status) != Some(settlement) {
        return Vec::new();
    }
    match (settlement, held.returned) {
        (Settlement::Charge, false) => vec![
            (CreditKind::Deduct, MicroUsd(-cost.0)),
            (CreditKind::Release, held.reserved),
        ],
        (Settlement::Refund, false) => vec![(CreditKind::Refund, held.reserved)],
        // Charged, then failed (only a completed LoRA's lost file fails it after its charge):
        // the charge goes back, once.
        (Settlement::Refund, true) => match held.deducted {
            Some(charged) if status == TrainingStatus::Failed && !held.reimbursed => {
                vec![(CreditKind::Reimburse, charged)]
            }
            _ => Vec::new(),
        },
        (Settlement::Charge, true) => Vec::new(),
    }
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
    fn every_failed_lora_nets_to_zero_and_nothing_is_written_twice() {
        use TrainingStatus::*;
        let (r, c) = (MicroUsd(500_000), MicroUsd(620_000));
        let open = LoraCredits {
            reserved: r,
            ..LoraCredits::default()
        };
        let charged = LoraCredits {
            returned: true,
            deducted: Some(c),
            ..open
        };
        let sum = |e: &[(CreditKind, MicroUsd)]| e.iter().map(|(_, m)| m.0).sum::<i64>();
        // Completed: charged the actual cost, the reservation released.
        let charge = settlement_entries(Settlement::Charge, Completed, open, c);
        assert_eq!(
            charge,
            [
                (CreditKind::Deduct, MicroUsd(-c.0)),
                (CreditKind::Release, r)
            ]
        );
        // Failed or cancelled before a charge: the reservation refunded; with the reserve the
        // LoRA nets to zero.
        for status in [Failed, Cancelled] {
            let refund = settlement_entries(Settlement::Refund, status, open, c);
            assert_eq!(refund, [(CreditKind::Refund, r)]);
            assert_eq!(sum(&refund) - r.0, 0);
        }
        // Failed after the charge (its file lost): the charge reimbursed, and the LoRA nets to
        // zero again (reserve, deduct, release, reimburse).
        let reimburse = settlement_entries(Settlement::Refund, Failed, charged, c);
        assert_eq!(reimburse, [(CreditKind::Reimburse, c)]);
        assert_eq!(-r.0 + sum(&charge) + sum(&reimburse), 0);
        // Never twice, never for a LoRA that did not fail.
        let done = LoraCredits {
            reimbursed: true,
            ..charged
        };
        assert!(settlement_entries(Settlement::Refund, Failed, done, c).is_empty());
        assert!(settlement_entries(Settlement::Refund, Completed, charged, c).is_empty());
        assert!(settlement_entries(Settlement::Charge, Completed, charged, c).is_empty());
        // Decided on a status that changed meanwhile: nothing.
        assert!(settlement_entries(Settlement::Charge, Failed, open, c).is_empty());
        assert!(settlement_entries(Settlement::Refund, Queued, open, c).is_empty());
        let refunded = LoraCredits {
            returned: true,
            ..open
        };
        assert!(settlement_entries(Settlement::Refund, Failed, refunded, c).is_empty());
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
