//! The database's numbers on `/metrics`: [`Collector::collect`] reads one
//! [`OpsSnapshot`](loraforge_db::OpsSnapshot) and publishes it through the `metrics` facade (one
//! steppable round, the time passed in); [`run`] repeats it every ~15 s. Every replica publishes
//! the same database-wide numbers: aggregate them across replicas with `max`, not `sum`.
//!
//! Runs are never deleted and an outcome is recorded once, so the runs' totals only grow: they
//! are published as counters set to the table's totals (`loraforge_runs_total`,
//! `loraforge_run_seconds_total`), which `rate()` reads like any counter.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use loraforge_db::{DbError, MetricsStore, OpsSnapshot};
use loraforge_domain::TrainingStatus;
use loraforge_domain::breaker::BreakerState;

use crate::state::AppState;

/// LoRAs by training status (`status`), every status present (0 when none).
pub const JOBS: &str = "loraforge_jobs";
/// LoRAs waiting `queued`.
pub const QUEUE_DEPTH: &str = "loraforge_queue_depth";
/// Age of the oldest queued LoRA (since it was created), seconds; 0 with an empty queue.
pub const QUEUE_OLDEST_WAIT: &str = "loraforge_queue_oldest_wait_seconds";
/// Ended runs, by `backend` and `outcome` (counter set to the runs table's totals).
pub const RUNS: &str = "loraforge_runs_total";
/// Seconds of ended runs (start to end), by `backend` and `outcome` (counter, as above).
pub const RUN_SECONDS: &str = "loraforge_run_seconds_total";
/// Runs whose instance is not confirmed gone, by `backend`.
pub const LIVE_RUNS: &str = "loraforge_live_runs";
/// 1 for each backend's breaker state, 0 for its other states (`backend`, `state`).
pub const BREAKER_STATE: &str = "loraforge_breaker_state";
/// Operator alerts, by `kind`.
pub const ALERTS_OPEN: &str = "loraforge_alerts_open";
/// When the collector last read the database successfully, Unix seconds.
pub const COLLECTED_AT: &str = "loraforge_metrics_collected_at_seconds";

/// How long the last collection's database reads took, seconds.
pub const COLLECT_SECONDS: &str = "loraforge_metrics_collect_seconds";

/// How often [`run`] collects.
pub const EVERY: Duration = Duration::from_secs(15);

/// The help text of the collector's metrics.
pub fn describe() {
    metrics::describe_gauge!(JOBS, "LoRAs by training status");
    metrics::describe_gauge!(QUEUE_DEPTH, "LoRAs waiting queued");
    metrics::describe_gauge!(
        QUEUE_OLDEST_WAIT,
        metrics::Unit::Seconds,
        "Age of the oldest queued LoRA since it was created"
    );
    metrics::describe_counter!(
        RUNS,
        "Ended training runs by backend and outcome (the runs table's totals)"
    );
    metrics::describe_counter!(
        RUN_SECONDS,
        metrics::Unit::Seconds,
        "Seconds of ended training runs by backend and outcome (the runs table's totals)"
    );
    metrics::describe_gauge!(
        LIVE_RUNS,
        "Training runs whose instance is not confirmed gone, by backend"
    );
    metrics::describe_gauge!(BREAKER_STATE, "1 on each backend's circuit breaker state");
    metrics::describe_gauge!(ALERTS_OPEN, "Operator alerts by kind");
    metrics::describe_gauge!(
        COLLECTED_AT,
        "When the database's metrics were last read, Unix seconds"
    );
    metrics::describe_gauge!(
        COLLECT_SECONDS,
        metrics::Unit::Seconds,
        "How long the last read of the database's metrics took"
    );
}

/// Publishes snapshots; remembers the label values it has published so one that disappears
/// (a backend with no live runs left) is set to 0 rather than left at its last value.
#[derive(Debug, Default)]
pub struct Collector {
    live_backends: BTreeSet<String>,
    alert_kinds: BTreeSet<String>,
}

impl Collector {
    /// One round: reads the database and publishes. `backends` are the configured backends'
    /// names (a backend whose breaker has no row yet is closed).
    pub async fn collect(
        &mut self,
        repo: &dyn MetricsStore,
        backends: &[String],
        now: DateTime<Utc>,
    ) -> Result<OpsSnapshot, DbError> {
        let snapshot = repo.ops_snapshot().await?;
        self.publish(&snapshot, backends, now);
        Ok(snapshot)
    }

    /// Publishes `snapshot` through the `metrics` facade (the installed recorder).
    pub fn publish(&mut self, snapshot: &OpsSnapshot, backends: &[String], now: DateTime<Utc>) {
        let count = |status: TrainingStatus| {
            snapshot
                .loras_by_status
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n)
        };
        for status in TrainingStatus::ALL {
            metrics::gauge!(JOBS, "status" => status.as_str()).set(count(status) as f64);
        }
        metrics::gauge!(QUEUE_DEPTH).set(count(TrainingStatus::Queued) as f64);
        let wait = snapshot.oldest_queued_created_at.map_or(0.0, |t| {
            ((now - t).num_milliseconds().max(0) as f64) / 1000.0
        });
        metrics::gauge!(QUEUE_OLDEST_WAIT).set(wait);

        for r in &snapshot.ended_runs {
            let labels = [
                ("backend", r.backend.clone()),
                ("outcome", r.outcome.clone()),
            ];
            metrics::counter!(RUNS, &labels).absolute(r.runs);
            metrics::counter!(RUN_SECONDS, &labels).absolute(r.seconds);
        }

        let live: BTreeSet<String> = snapshot.live_runs.iter().map(|(b, _)| b.clone()).collect();
        for gone in self.live_backends.difference(&live) {
            metrics::gauge!(LIVE_RUNS, "backend" => gone.clone()).set(0.0);
        }
        for (backend, n) in &snapshot.live_runs {
            metrics::gauge!(LIVE_RUNS, "backend" => backend.clone()).set(*n as f64);
        }
        self.live_backends = live;

        let mut breakers: Vec<(String, BreakerState)> = backends
            .iter()
            .filter(|b| !snapshot.breakers.iter().any(|(s, _)| s == *b))
            .map(|b| (b.clone(), BreakerState::Closed))
            .collect();
        breakers.extend(snapshot.breakers.iter().cloned());
        for (backend, state) in breakers {
            for s in BreakerState::ALL {
                metrics::gauge!(BREAKER_STATE, "backend" => backend.clone(), "state" => s.as_str())
                    .set(if s == state { 1.0 } else { 0.0 });
            }
        }

        let kinds: BTreeSet<String> = snapshot
            .alerts_by_kind
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        for gone in self.alert_kinds.difference(&kinds) {
            metrics::gauge!(ALERTS_OPEN, "kind" => gone.clone()).set(0.0);
        }
        for (kind, n) in &snapshot.alerts_by_kind {
            metrics::gauge!(ALERTS_OPEN, "kind" => kind.clone()).set(*n as f64);
        }
        self.alert_kinds = kinds;

        metrics::gauge!(COLLECTED_AT).set(now.timestamp() as f64);
    }
}

/// Collects every `every` until `shutdown` resolves, and keeps the recorder's histograms tidy
/// (`run_upkeep`). A failed round is logged; the next one retries.
pub async fn run(
    state: AppState,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut collector = Collector::default();
    let backends: Vec<String> = state.backends().iter().map(|b| b.name.clone()).collect();
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = interval.tick() => {
                let started = std::time::Instant::now();
                match collector.collect(state.repo(), &backends, state.now()).await {
                    Ok(_) => metrics::gauge!(COLLECT_SECONDS).set(started.elapsed().as_secs_f64()),
                    Err(e) => tracing::warn!(error = %e, "reading the database's metrics failed"),
                }
                if let Some(m) = state.metrics() {
                    m.handle().run_upkeep();
                }
            }
        }
    }
}
