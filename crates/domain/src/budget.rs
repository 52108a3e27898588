//! The cost ledger's and the system budget's rules: which month a cost falls in, what a month of
//! storage costs, what a running run is expected to cost, and whether the budget admits a new
//! run. Pure: the engine's budget gate and the admin routes feed them what the ledger holds.
//!
//! The hard limit: a new run may start on a backend only while
//! `spent + committed + expected(backend) <= budget` and `spent + committed < budget`, where
//! `spent` is the month's ledger, `committed` what running runs are expected to cost still, and
//! `expected(backend)` the median cost of that backend's recent finished runs (0 without
//! history). So a fully used budget holds every new job, even on a free backend.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Utc};

use crate::MicroUsd;
use crate::limits::MonthlyWindow;

/// What a ledger entry pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CostKind {
    /// A run's GPU time (billed from its creation to its confirmed end, or the provider's
    /// billed time). Validation of the trained LoRA runs inside the same GPU run (the trainer
    /// renders the validation images before it exits), so it is part of this entry.
    Gpu,
    /// Validation work the control plane pays for separately. Nothing does today (scoring runs
    /// inside the GPU run); the kind exists so such work is never hidden in `gpu`.
    Validation,
    /// A month of a LoRA's stored files.
    Storage,
}

impl CostKind {
    pub const ALL: [CostKind; 3] = [CostKind::Gpu, CostKind::Validation, CostKind::Storage];

    pub fn as_str(self) -> &'static str {
        match self {
            CostKind::Gpu => "gpu",
            CostKind::Validation => "validation",
            CostKind::Storage => "storage",
        }
    }

    pub fn parse(s: &str) -> Option<CostKind> {
        CostKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The UTC month of `t` as the ledger writes it, `YYYY-MM`.
pub fn month_key(t: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", t.year(), t.month())
}

/// The idempotency key of a run's GPU entry.
pub fn gpu_entry_key(run: impl std::fmt::Display) -> String {
    format!("gpu:{run}")
}

/// The idempotency key of a LoRA's storage entry for `month` (`YYYY-MM`).
pub fn storage_entry_key(lora: impl std::fmt::Display, month: &str) -> String {
    format!("storage:{lora}:{month}")
}

/// Bytes in the "GB" of a price per GB-month (decimal, as object stores bill).
pub const BYTES_PER_GB: u64 = 1_000_000_000;

/// A month of `bytes` stored at `price` per GB-month, rounded half up once.
pub fn storage_cost(bytes: u64, price_per_gb_month: MicroUsd) -> MicroUsd {
    let gb = i128::from(BYTES_PER_GB);
    let cost = (i128::from(bytes) * i128::from(price_per_gb_month.micros().max(0)) + gb / 2) / gb;
    MicroUsd(i64::try_from(cost).unwrap_or(i64::MAX))
}

/// The median of `values` (the lower middle of an even count); `None` when empty.
pub fn median(values: &[i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    Some(v[(v.len() - 1) / 2])
}

/// A run whose instance is not gone yet, as the budget sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningRun {
    pub backend: String,
    pub price_per_hour: Option<MicroUsd>,
    /// Billing starts here (the run's creation).
    pub created_at: DateTime<Utc>,
}

/// A finished run on a backend: how long it was billed and what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedRun {
    pub millis: i64,
    pub cost: MicroUsd,
}

/// What a running run is expected to cost in all: its price per hour × the longer of the time
/// it has run and the median billed time of its backend's finished runs (so a run is expected to
/// take as long as usual, and never less than it already has).
pub fn expected_run_cost(
    run: &RunningRun,
    median_millis: Option<i64>,
    now: DateTime<Utc>,
) -> MicroUsd {
    let Some(price) = run.price_per_hour else {
        return MicroUsd::ZERO;
    };
    let elapsed = (now - run.created_at).num_milliseconds().max(0);
    let millis = elapsed.max(median_millis.unwrap_or(0));
    price.per_hour_for_millis(u64::try_from(millis).unwrap_or(0))
}

/// Everything [`assess`] needs, read from the ledger and the runs.
#[derive(Debug, Clone, Default)]
pub struct BudgetInputs {
    pub budget: MicroUsd,
    /// The month's ledger total.
    pub spent: MicroUsd,
    pub running: Vec<RunningRun>,
    /// Recent finished runs per backend.
    pub history: HashMap<String, Vec<FinishedRun>>,
}

/// The month's budget as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetStatus {
    pub month: String,
    pub window: MonthlyWindow,
    pub budget: MicroUsd,
    pub spent: MicroUsd,
    /// What running runs are expected to cost (in all; the part already billed is not in
    /// `spent` until their instances are gone).
    pub committed: MicroUsd,
    /// The median cost of a new run per backend (absent: no history, expected 0).
    pub expected_next: HashMap<String, MicroUsd>,
}

/// Alert levels, each raised once a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BudgetLevel {
    /// At or past the alert percent.
    Warning,
    /// Fully used: new jobs are held.
    Exhausted,
}

impl BudgetLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetLevel::Warning => "warning",
            BudgetLevel::Exhausted => "exhausted",
        }
    }
    /// The alert kind recorded for it.
    pub fn alert_kind(self) -> &'static str {
        match self {
            BudgetLevel::Warning => "budget_warning",
            BudgetLevel::Exhausted => "budget_exhausted",
        }
    }
}

/// The budget at `now` from `inputs`.
pub fn assess(inputs: &BudgetInputs, now: DateTime<Utc>) -> BudgetStatus {
    let medians: HashMap<&str, (Option<i64>, Option<i64>)> = inputs
        .history
        .iter()
        .map(|(b, runs)| {
            let millis: Vec<i64> = runs.iter().map(|r| r.millis).collect();
            let costs: Vec<i64> = runs.iter().map(|r| r.cost.micros()).collect();
            (b.as_str(), (median(&millis), median(&costs)))
        })
        .collect();
    let committed = inputs
        .running
        .iter()
        .map(|r| {
            let m = medians.get(r.backend.as_str()).and_then(|m| m.0);
            expected_run_cost(r, m, now)
        })
        .fold(MicroUsd::ZERO, MicroUsd::saturating_add);
    let expected_next = medians
        .iter()
        .filter_map(|(b, (_, c))| c.map(|c| ((*b).to_owned(), MicroUsd(c))))
        .collect();
    BudgetStatus {
        month: month_key(now),
        window: MonthlyWindow::containing(now),
        budget: inputs.budget,
        spent: inputs.spent,
        committed,
        expected_next,
    }
}

impl BudgetStatus {
    /// Spent plus committed.
    pub fn used(&self) -> MicroUsd {
        self.spent.saturating_add(self.committed)
    }

    /// What is left of the budget after spend and commitments (0 when past it).
    pub fn left(&self) -> MicroUsd {
        MicroUsd((self.budget.micros() - self.used().micros()).max(0))
    }

    /// Used as a percentage of the budget, in hundredths of a percent (100 % = 10_000); a zero
    /// budget is fully used.
    pub fn percent_basis_points(&self) -> i64 {
        if self.budget.micros() <= 0 {
            return 10_000;
        }
        let bp = i128::from(self.used().micros()) * 10_000 / i128::from(self.budget.micros());
        i64::try_from(bp).unwrap_or(i64::MAX)
    }

    /// The highest alert level reached with alerts at `alert_percent`.
    pub fn level(&self, alert_percent: u32) -> Option<BudgetLevel> {
        let bp = self.percent_basis_points();
        if bp >= 10_000 {
            Some(BudgetLevel::Exhausted)
        } else if bp >= i64::from(alert_percent) * 100 {
            Some(BudgetLevel::Warning)
        } else {
            None
        }
    }

    /// `Err(why)` when a new run on `backend` would pass the budget; the reason is for the
    /// queued LoRAs' status message.
    pub fn admits(&self, backend: &str) -> Result<(), String> {
        let next = self
            .expected_next
            .get(backend)
            .copied()
            .unwrap_or(MicroUsd::ZERO);
        let used = self.used();
        if used < self.budget && used.saturating_add(next) <= self.budget {
            return Ok(());
        }
        Err(format!(
            "the monthly budget of {} is reached ({} spent, {} expected for running jobs); jobs start again on {} or when an admin raises the budget",
            self.budget,
            self.spent,
            self.committed,
            self.window.end.format("%Y-%m-%d"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn months_and_storage_cost_round_once() {
        assert_eq!(month_key(t("2026-01-31T23:59:59Z")), "2026-01");
        assert_eq!(month_key(t("2026-12-01T00:00:00Z")), "2026-12");
        let price = MicroUsd::parse_dollars("0.023").unwrap();
        assert_eq!(storage_cost(BYTES_PER_GB, price), MicroUsd(23_000));
        // 170 MB: 0.17 × 23000 = 3910.
        assert_eq!(storage_cost(170_000_000, price), MicroUsd(3_910));
        // Half a micro-dollar rounds up, less rounds down.
        assert_eq!(storage_cost(21_740, price), MicroUsd(1));
        assert_eq!(storage_cost(21_000, price), MicroUsd(0));
        assert_eq!(storage_cost(0, price), MicroUsd::ZERO);
    }

    #[test]
    fn a_running_run_is_expected_to_last_at_least_the_median() {
        let run = RunningRun {
            backend: "pods".into(),
            price_per_hour: Some(MicroUsd::from_dollars(2)),
            created_at: t("2026-11-01T10:00:00Z"),
        };
        let now = t("2026-11-01T10:30:00Z");
        assert_eq!(
            expected_run_cost(&run, None, now),
            MicroUsd::from_dollars(1)
        );
        assert_eq!(
            expected_run_cost(&run, Some(3_600_000), now),
            MicroUsd::from_dollars(2)
        );
        assert_eq!(median(&[5, 1, 3, 2]), Some(2));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn the_budget_holds_new_runs_once_it_would_pass_and_alerts_by_level() {
        let now = t("2026-11-20T00:00:00Z");
        let mut inputs = BudgetInputs {
            budget: MicroUsd::from_dollars(10),
            spent: MicroUsd::from_dollars(7),
            ..BudgetInputs::default()
        };
        inputs.history.insert(
            "pods".into(),
            vec![FinishedRun {
                millis: 3_600_000,
                cost: MicroUsd::from_dollars(2),
            }],
        );
        let s = assess(&inputs, now);
        assert_eq!(s.level(75), None);
        assert!(s.admits("pods").is_ok(), "7 + 2 <= 10");
        assert!(s.admits("local").is_ok(), "no history: expected 0");
        inputs.spent = MicroUsd(8_500_000);
        let s = assess(&inputs, now);
        assert_eq!(s.level(75), Some(BudgetLevel::Warning));
        let why = s.admits("pods").unwrap_err();
        assert!(why.contains("budget of $10 is reached"), "{why}");
        assert!(
            why.contains("2026-12-01") && why.contains("admin raises"),
            "{why}"
        );
        assert!(s.admits("local").is_ok());
        inputs.running.push(RunningRun {
            backend: "pods".into(),
            price_per_hour: Some(MicroUsd::from_dollars(2)),
            created_at: now,
        });
        let s = assess(&inputs, now);
        assert_eq!(s.committed, MicroUsd::from_dollars(2));
        assert_eq!(s.level(75), Some(BudgetLevel::Exhausted));
        assert_eq!(s.left(), MicroUsd::ZERO);
        assert!(
            s.admits("local").is_err(),
            "a used-up budget holds every backend"
        );
    }
}
