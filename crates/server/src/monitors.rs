//! Operator monitors (issue 11 item 5). [`run_monitors`] is one steppable round with the time
//! passed in (run hourly by `maintenance::run` under a `maintenance_leases` lease); each monitor
//! raises its alert through `AlertStore::raise_alert` with the configured cooldown, so a
//! condition that persists is alerted once per cooldown, not once per round:
//! - `training_too_long`: a job training longer than `training_alert_after` (2 h); past
//!   `training_cancel_after` (3 h) it is cancelled through the status machine (the engine then
//!   ends its run) and `training_cancelled` is raised;
//! - `failure_rate`: more than `failure_rate_percent` (10 %) of the LoRAs that finished in the
//!   last 24 h failed, once at least `failure_min_samples` finished;
//! - `cost_per_lora`: the average `training_cost_micros` of LoRAs completed this month is above
//!   `max_avg_cost` ($2.50);
//! - `lora_growth`: LoRAs created this month above `loras_per_month` prorated by day of month;
//! - `storage_cost`: stored LoRA bytes × `storage_price_per_gb_month` above `max_storage_cost`;
//! - `failed_cleanup`: a run whose instance is not gone after `cleanup_failures` failed
//!   terminations;
//! - `breaker_opened`: a backend's circuit breaker opened within the cooldown.
//!
//! Orphaned instances are alerted by the engine's orphan sweep through `record_alert`, the same
//! deduplicated path.

use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

use loraforge_db::{EventDetail, Repository};
use loraforge_domain::breaker::BreakerState;
use loraforge_domain::{MicroUsd, MonthlyWindow, StatusEvent};

/// Thresholds of the monitors (`LORAFORGE_MONITOR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSettings {
    pub training_alert_after: Duration,
    pub training_cancel_after: Duration,
    pub failure_rate_percent: u32,
    pub failure_min_samples: u64,
    pub max_avg_cost: MicroUsd,
    pub loras_per_month: u64,
    pub storage_price_per_gb_month: MicroUsd,
    pub max_storage_cost: MicroUsd,
    pub cleanup_failures: u32,
    /// The alerts' dedup cooldown (`LORAFORGE_ALERT_COOLDOWN`).
    pub cooldown: Duration,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            training_alert_after: Duration::from_secs(2 * 3600),
            training_cancel_after: Duration::from_secs(3 * 3600),
            failure_rate_percent: 10,
            failure_min_samples: 10,
            max_avg_cost: MicroUsd(2_500_000),
            loras_per_month: 1000,
            storage_price_per_gb_month: MicroUsd(23_000),
            max_storage_cost: MicroUsd(100_000_000),
            cleanup_failures: 3,
            cooldown: loraforge_db::alerts::DEFAULT_ALERT_COOLDOWN,
        }
    }
}

/// What one round found: each alert raised as `(kind, subject, new)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MonitorReport {
    /// Whether this replica held the monitors' lease (only with [`run_monitors_leased`]).
    pub held: bool,
    pub raised: Vec<(String, String, bool)>,
    /// LoRAs cancelled for training too long.
    pub cancelled: Vec<String>,
    pub errors: Vec<String>,
}

impl MonitorReport {
    /// The kinds of the alerts that were new rows.
    pub fn new_kinds(&self) -> Vec<&str> {
        self.raised
            .iter()
            .filter(|r| r.2)
            .map(|r| r.0.as_str())
            .collect()
    }
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Whether `failed` of `finished` is above `percent`, with at least `min_samples` finished.
pub fn failure_rate_exceeded(failed: u64, finished: u64, percent: u32, min_samples: u64) -> bool {
    finished >= min_samples.max(1)
        && u128::from(failed) * 100 > u128::from(finished) * u128::from(percent)
}

/// LoRAs expected by the end of `now`'s day: `per_month` × days so far ÷ days in the month.
pub fn prorated_projection(per_month: u64, now: DateTime<Utc>) -> u64 {
    let window = MonthlyWindow::containing(now);
    let days = u64::try_from((window.end - window.start).num_days()).unwrap_or(30);
    per_month.saturating_mul(u64::from(now.day())) / days.max(1)
}

/// What `bytes` cost per month at `price_per_gb` (GB = 10⁹ bytes), rounded down.
pub fn storage_cost(bytes: u64, price_per_gb: MicroUsd) -> MicroUsd {
    let cost = u128::from(bytes) * u128::try_from(price_per_gb.0).unwrap_or(0) / 1_000_000_000;
    MicroUsd(i64::try_from(cost).unwrap_or(i64::MAX))
}

struct Raiser<'a> {
    repo: &'a dyn Repository,
    cooldown: Duration,
    now: DateTime<Utc>,
    report: MonitorReport,
}

impl Raiser<'_> {
    async fn raise(&mut self, kind: &str, subject: &str, message: String) {
        match self
            .repo
            .raise_alert(kind, subject, &message, self.cooldown, self.now)
            .await
        {
            Ok(r) => {
                if r.new {
                    tracing::warn!(alert = kind, subject, %message, "operator alert");
                }
                self.report
                    .raised
                    .push((kind.to_owned(), subject.to_owned(), r.new));
            }
            Err(e) => self.report.errors.push(format!("raising {kind}: {e}")),
        }
    }
}

/// One round of every monitor at `now`.
pub async fn run_monitors(
    repo: &dyn Repository,
    settings: &MonitorSettings,
    now: DateTime<Utc>,
) -> MonitorReport {
    let mut r = Raiser {
        repo,
        cooldown: settings.cooldown,
        now,
        report: MonitorReport::default(),
    };

    // Training too long: alert, then cancel past the grace.
    match repo
        .jobs_running_longer_than(now - chrono(settings.training_alert_after))
        .await
    {
        Ok(jobs) => {
            for job in jobs {
                let hours = (now - job.started_at).num_minutes() as f64 / 60.0;
                let lora = job.lora_id.to_string();
                if now - job.started_at >= chrono(settings.training_cancel_after) {
                    let why = format!(
                        "cancelled by the monitor: training ran {hours:.1} h, past the {} h limit",
                        settings.training_cancel_after.as_secs() / 3600
                    );
                    match repo
                        .apply_event(
                            job.lora_id,
                            StatusEvent::Cancel,
                            EventDetail::because(why.clone()),
                            now,
                        )
                        .await
                    {
                        Ok(_) => {
                            r.report.cancelled.push(lora.clone());
                            r.raise("training_cancelled", &lora, why).await;
                        }
                        Err(e) => r.report.errors.push(format!("cancelling {lora}: {e}")),
                    }
                } else {
                    r.raise(
                        "training_too_long",
                        &lora,
                        format!(
                            "LoRA {lora} has been training {hours:.1} h (attempt {}); it is cancelled after {} h",
                            job.attempt,
                            settings.training_cancel_after.as_secs() / 3600
                        ),
                    )
                    .await;
                }
            }
        }
        Err(e) => r.report.errors.push(format!("reading long runs: {e}")),
    }

    let month = MonthlyWindow::containing(now);
    match repo
        .monitor_stats(now - chrono::Duration::hours(24), month.start)
        .await
    {
        Ok(s) => {
            if failure_rate_exceeded(
                s.failed_in_day,
                s.finished_in_day,
                settings.failure_rate_percent,
                settings.failure_min_samples,
            ) {
                r.raise(
                    "failure_rate",
                    "last_24h",
                    format!(
                        "{} of {} LoRAs that finished in the last 24 h failed (over {} %)",
                        s.failed_in_day, s.finished_in_day, settings.failure_rate_percent
                    ),
                )
                .await;
            }
            if s.completed_in_month > 0 {
                let avg = MicroUsd(s.cost_in_month_micros / s.completed_in_month as i64);
                if avg > settings.max_avg_cost {
                    r.raise(
                        "cost_per_lora",
                        &month.start.format("%Y-%m").to_string(),
                        format!(
                            "LoRAs completed this month cost {avg} each on average ({} over {}), above {}",
                            MicroUsd(s.cost_in_month_micros),
                            s.completed_in_month,
                            settings.max_avg_cost
                        ),
                    )
                    .await;
                }
            }
            let projection = prorated_projection(settings.loras_per_month, now);
            if s.created_in_month > projection {
                r.raise(
                    "lora_growth",
                    &month.start.format("%Y-%m").to_string(),
                    format!(
                        "{} LoRAs created this month, above the {projection} projected by today ({} a month)",
                        s.created_in_month, settings.loras_per_month
                    ),
                )
                .await;
            }
            let cost = storage_cost(s.stored_lora_bytes, settings.storage_price_per_gb_month);
            if cost > settings.max_storage_cost {
                r.raise(
                    "storage_cost",
                    "lora_files",
                    format!(
                        "stored LoRA files ({} bytes) cost {cost} a month, above {}",
                        s.stored_lora_bytes, settings.max_storage_cost
                    ),
                )
                .await;
            }
        }
        Err(e) => r.report.errors.push(format!("reading totals: {e}")),
    }

    match repo.stuck_cleanups(settings.cleanup_failures).await {
        Ok(stuck) => {
            for run in stuck {
                r.raise(
                    "failed_cleanup",
                    &format!("{}:{}", run.backend, run.provider_id),
                    format!(
                        "run {} on {} ({}) could not be terminated after {} tries; it may still cost money",
                        run.run_id, run.backend, run.provider_id, run.terminate_failures
                    ),
                )
                .await;
            }
        }
        Err(e) => r
            .report
            .errors
            .push(format!("reading failed cleanups: {e}")),
    }

    match repo.breaker_transitions(None, 100).await {
        Ok(transitions) => {
            let since = now - chrono(settings.cooldown);
            for t in transitions
                .iter()
                .filter(|t| t.to == BreakerState::Open && t.at > since && t.at <= now)
            {
                r.raise(
                    "breaker_opened",
                    &t.backend,
                    format!(
                        "the circuit breaker of backend {} opened at {}: {}",
                        t.backend,
                        t.at.to_rfc3339(),
                        t.reason
                    ),
                )
                .await;
            }
        }
        Err(e) => r
            .report
            .errors
            .push(format!("reading breaker transitions: {e}")),
    }
    r.report
}

/// [`run_monitors`] if this replica (`holder`) holds the monitors' lease (taken for `lease`).
pub async fn run_monitors_leased(
    repo: &dyn Repository,
    settings: &MonitorSettings,
    holder: &str,
    lease: Duration,
    now: DateTime<Utc>,
) -> MonitorReport {
    match repo
        .try_lease("monitors", holder, now + chrono(lease), now)
        .await
    {
        Ok(true) => {}
        Ok(false) => return MonitorReport::default(),
        Err(e) => {
            return MonitorReport {
                errors: vec![format!("taking the monitors' lease: {e}")],
                ..MonitorReport::default()
            };
        }
    }
    let mut report = run_monitors(repo, settings, now).await;
    report.held = true;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_rate_needs_samples_and_more_than_the_percent() {
        assert!(!failure_rate_exceeded(1, 2, 10, 10), "1 of 2 does not page");
        assert!(
            !failure_rate_exceeded(1, 10, 10, 10),
            "exactly 10 % is not above"
        );
        assert!(failure_rate_exceeded(2, 10, 10, 10));
        assert!(!failure_rate_exceeded(0, 0, 10, 0));
    }

    #[test]
    fn projection_is_prorated_by_day() {
        let nov_15: DateTime<Utc> = "2026-11-15T12:00:00Z".parse().unwrap();
        assert_eq!(prorated_projection(1000, nov_15), 500);
        let nov_30: DateTime<Utc> = "2026-11-30T23:00:00Z".parse().unwrap();
        assert_eq!(prorated_projection(1000, nov_30), 1000);
    }

    #[test]
    fn storage_cost_is_bytes_times_price() {
        assert_eq!(
            storage_cost(1_000_000_000, MicroUsd(23_000)),
            MicroUsd(23_000)
        );
        assert_eq!(
            storage_cost(5_000_000_000_000, MicroUsd(23_000)),
            MicroUsd(115_000_000)
        );
    }
}
