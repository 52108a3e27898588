//! The system budget as a [`LaunchGate`]: before the router starts a run on a backend, the month's
//! spend plus what running runs are expected to cost plus this run's expected cost must fit the
//! budget (`domain::budget`). The gate answers from a cached state that [`BudgetGate::refresh`]
//! brings up to date; the engine calls it once per tick, before dispatch (`LaunchGate::refresh`),
//! so every replica sees the ledger, the runs and an admin's new budget within one tick. A new
//! month is a new ledger month: held jobs start again by themselves.
//!
//! The same refresh raises the budget alerts, each once a month across replicas
//! (`LedgerStore::claim_budget_alert` first, then `Repository::record_alert`): `budget_warning`
//! at the alert percent, `budget_exhausted` at 100 %.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use loraforge_db::Repository;
use loraforge_db::ledger::budget_status;
use loraforge_domain::MicroUsd;
use loraforge_domain::budget::{BudgetLevel, BudgetStatus};

use crate::router::LaunchGate;

/// The budget's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSettings {
    /// `LORAFORGE_MONTHLY_BUDGET_USD`; an admin's stored budget overrides it.
    pub monthly_budget: MicroUsd,
    /// `LORAFORGE_BUDGET_ALERT_PERCENT`.
    pub alert_percent: u32,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            monthly_budget: MicroUsd::from_dollars(200),
            alert_percent: 75,
        }
    }
}

/// What one [`BudgetGate::refresh`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefresh {
    pub status: BudgetStatus,
    /// Alerts this refresh raised (kinds).
    pub alerts: Vec<&'static str>,
}

#[derive(Debug)]
pub struct BudgetGate {
    repo: Arc<dyn Repository>,
    settings: BudgetSettings,
    state: Mutex<Option<BudgetStatus>>,
    /// (month, level) this process already claimed or saw claimed: not asked again every tick.
    claimed: Mutex<std::collections::HashSet<(String, &'static str)>>,
}

impl BudgetGate {
    pub fn new(repo: Arc<dyn Repository>, settings: BudgetSettings) -> Self {
        Self {
            repo,
            settings,
            state: Mutex::new(None),
            claimed: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The state the gate answers from (none before the first refresh).
    pub fn status(&self) -> Option<BudgetStatus> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One round: reads the budget at `now`, caches it, raises the month's alerts not raised
    /// yet, and sets the spend and budget-left gauges. On a database error the previous state
    /// stays.
    pub async fn refresh(&self, now: DateTime<Utc>) -> loraforge_db::Result<BudgetRefresh> {
        let status = budget_status(&*self.repo, self.settings.monthly_budget, now).await?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.clone());
        crate::budget_metrics::record(&status);
        let mut alerts = Vec::new();
        if let Some(reached) = status.level(self.settings.alert_percent) {
            for level in [BudgetLevel::Warning, BudgetLevel::Exhausted] {
                if level > reached {
                    break;
                }
                let key = (status.month.clone(), level.as_str());
                if self
                    .claimed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&key)
                {
                    continue;
                }
                let won = self
                    .repo
                    .claim_budget_alert(&status.month, level.as_str(), now)
                    .await?;
                self.claimed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key);
                if won {
                    let message = alert_message(level, &status, self.settings.alert_percent);
                    tracing::warn!(kind = level.alert_kind(), %message, "budget alert");
                    self.repo
                        .record_alert(
                            level.alert_kind(),
                            &format!("budget:{}", status.month),
                            &message,
                            now,
                        )
                        .await?;
                    alerts.push(level.alert_kind());
                }
            }
        }
        Ok(BudgetRefresh { status, alerts })
    }
}

fn alert_message(level: BudgetLevel, s: &BudgetStatus, alert_percent: u32) -> String {
    let used = format!(
        "{} spent and {} expected for running jobs of the {} budget for {}",
        s.spent, s.committed, s.budget, s.month
    );
    match level {
        BudgetLevel::Warning => format!("{alert_percent} % of the monthly budget used: {used}"),
        BudgetLevel::Exhausted => format!(
            "the monthly budget is used up: {used}; new jobs wait in the queue until {} or until an admin raises the budget",
            s.window.end.format("%Y-%m-%d")
        ),
    }
}

impl LaunchGate for BudgetGate {
    fn admits(&self, backend: &str, now: DateTime<Utc>) -> Result<(), String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.as_ref() {
            // Last month's state never holds this month's jobs (the next refresh reads the new
            // month); no state yet (the database never answered) admits: claims fail anyway then.
            Some(s) if s.window.end > now => s.admits(backend),
            _ => Ok(()),
        }
    }

    fn refresh(&self, now: DateTime<Utc>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            BudgetGate::refresh(self, now)
                .await
                .map(|_| ())
                .map_err(|e| format!("refreshing the budget: {e}"))
        })
    }
}
