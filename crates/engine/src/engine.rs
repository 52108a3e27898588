//! The engine and its tick. Every step reads what it needs from the database and writes its
//! decisions back, so nothing is lost when the process dies between two steps: a run's outcome
//! is recorded before it is acted on, and acted on (settled) in one commit; an instance is
//! ended until its backend confirms it is gone; a claimed job with no run is reaped when its
//! lease ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};

use loraforge_db::{BreakerTransition, DbError, EventDetail, OpenRun, Repository};
use loraforge_domain::outcome::{self};
use loraforge_domain::{Clock, LoraId, StatusEvent, TrainingRun};

use crate::Result;
use crate::after_training::AfterTraining;
use crate::backend::{BackendError, Scope, TrainingBackend, WorkerTokens};
use crate::router::{LaunchGate, Router};
use crate::settings::{EngineSettings, chrono_duration, human_duration};

/// What one tick did, for tests and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// pending → queued.
    pub admitted: Vec<LoraId>,
    /// Runs launched on a backend.
    pub started: Vec<LoraId>,
    /// Launches that failed with a retryable error and will be tried again later.
    pub start_retries: Vec<LoraId>,
    /// Claimed jobs put back in the queue because no backend had room (no GPU anywhere).
    pub waiting: Vec<LoraId>,
    /// Trained runs settled by the after-training steps (completed, failed or awaiting review).
    pub published: Vec<LoraId>,
    /// Jobs put back in the queue for another run.
    pub requeued: Vec<LoraId>,
    /// Jobs failed.
    pub failed: Vec<LoraId>,
    /// Jobs whose run took longer than the timeout.
    pub timed_out: Vec<LoraId>,
    /// Runs whose instance the engine asked to end.
    pub stopped_runs: Vec<LoraId>,
    /// Runs whose instance is confirmed gone (cost recorded).
    pub gone: Vec<LoraId>,
    /// Runs that are still going (lease extended).
    pub watched: Vec<LoraId>,
    /// Circuit breaker changes this tick made (also in `breaker_transitions`).
    pub breaker_transitions: Vec<BreakerTransition>,
    /// Sample batch attempts launched / completed-or-failed instances ended / attempts failed.
    pub samples_started: Vec<loraforge_domain::SampleBatchId>,
    pub samples_gone: Vec<loraforge_domain::SampleBatchId>,
    pub samples_failed: Vec<loraforge_domain::SampleBatchId>,
    /// Per-job problems that did not stop the tick.
    pub errors: Vec<String>,
}

impl TickReport {
    pub(crate) fn merge(&mut self, o: TickReport) {
        macro_rules! extend {
            ($($f:ident),*) => { $(self.$f.extend(o.$f);)* };
        }
        extend!(
            admitted,
            started,
            start_retries,
            waiting,
            published,
            requeued,
            failed,
            timed_out,
            stopped_runs,
            gone,
            watched,
            breaker_transitions,
            samples_started,
            samples_gone,
            samples_failed,
            errors
        );
    }
}

#[derive(Debug)]
pub struct Engine {
    pub(crate) repo: Arc<dyn Repository>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) router: Router,
    pub(crate) settings: EngineSettings,
    pub(crate) tokens: Option<Arc<dyn WorkerTokens>>,
    pub(crate) after: AfterTraining,
    /// When each backend's instances were last observed (for `observe_every`).
    pub(crate) observed_at: Mutex<HashMap<String, DateTime<Utc>>>,
    /// The latest nudge of each backend this engine has taken from the store (`NudgeStore`).
    nudges_seen: Mutex<HashMap<String, DateTime<Utc>>>,
    /// When this engine was made: a run of this engine's name created earlier was started by a
    /// predecessor (the service restarted while it ran).
    pub(crate) started_at: DateTime<Utc>,
    /// The refusal queued jobs were last told of, and when (`refusals.rs`).
    pub(crate) explained: Mutex<Option<(String, DateTime<Utc>)>>,
    /// Told of every finished tick (`/readyz` reads it).
    health: Option<Arc<crate::EngineHealth>>,
}

/// How long a backend that had no capacity is left alone before it is asked again.
pub(crate) const CAPACITY_COOL_DOWN: Duration = Duration::from_secs(60);

impl Engine {
    pub fn new(
        repo: Arc<dyn Repository>,
        clock: Arc<dyn Clock>,
        backends: Vec<Arc<dyn TrainingBackend>>,
        settings: EngineSettings,
        after: AfterTraining,
    ) -> Self {
        let started_at = clock.now();
        Self {
            repo,
            clock,
            router: Router::new(backends, settings.breaker),
            settings,
            tokens: None,
            after,
            observed_at: Mutex::new(HashMap::new()),
            nudges_seen: Mutex::new(HashMap::new()),
            started_at,
            explained: Mutex::new(None),
            health: None,
        }
    }

    /// Records every finished tick in `health`.
    #[must_use]
    pub fn with_health(mut self, health: Arc<crate::EngineHealth>) -> Self {
        self.health = Some(health);
        self
    }

    /// Gives every launched attempt a worker token from `tokens`.
    pub fn with_worker_tokens(mut self, tokens: Arc<dyn WorkerTokens>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Asks `gate` before every launch.
    pub fn with_gate(mut self, gate: Arc<dyn LaunchGate>) -> Self {
        self.router.gates.push(gate);
        self
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The backends, in the router's order.
    pub fn backends(&self) -> &[Arc<dyn TrainingBackend>] {
        &self.router.backends
    }

    /// The provider said something changed on `backend` (a webhook): its runs are observed at
    /// the next tick, whatever its `observe_every` (which then counts from that observation).
    /// Wake the loop too for the next tick to come now. An unknown name does nothing.
    pub fn nudge(&self, backend: &str) {
        self.observed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(backend);
    }

    /// The nudges recorded in the store by any replica (a provider's webhook reaches one of
    /// them): each backend nudged since this engine's last read is [`Self::nudge`]d, so its runs
    /// are observed at this tick wherever the webhook landed. A failed read is only reported.
    pub(crate) async fn take_nudges(&self, report: &mut TickReport) {
        let nudges = match self.repo.backend_nudges().await {
            Ok(n) => n,
            Err(e) => {
                report
                    .errors
                    .push(format!("reading the backends' nudges: {e}"));
                return;
            }
        };
        let fresh: Vec<String> = {
            let mut seen = self.nudges_seen.lock().unwrap_or_else(|e| e.into_inner());
            nudges
                .into_iter()
                .filter(|(backend, at)| {
                    let new = seen.get(backend).is_none_or(|s| s < at);
                    if new {
                        seen.insert(backend.clone(), *at);
                    }
                    new
                })
                .map(|(backend, _)| backend)
                .collect()
        };
        for backend in fresh {
            self.nudge(&backend);
        }
    }

    /// Ticks every `poll_interval` until `shutdown` resolves, then asks the backends to stop their
    /// runs gracefully (the trainer checkpoints; the next engine requeues and resumes the jobs).
    /// A failing tick is logged and the next one tries again.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        self.run_with_wake(Arc::new(tokio::sync::Notify::new()), shutdown)
            .await;
    }

    /// [`Self::run`], also ticking at once whenever `wake` is notified (the API does on every
    /// change: a new LoRA starts without waiting for the next poll, a cancel takes effect at
    /// once).
    pub async fn run_with_wake(
        self,
        wake: Arc<tokio::sync::Notify>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        self.run_loop(wake, shutdown).await;
    }

    /// [`Self::run_with_wake`] on a shared engine, so a supervisor can start the loop again after
    /// a panic (`crate::supervise`).
    pub async fn run_shared(
        self: Arc<Self>,
        wake: Arc<tokio::sync::Notify>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        self.run_loop(wake, shutdown).await;
    }

    async fn run_loop(
        &self,
        wake: Arc<tokio::sync::Notify>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let mut interval = tokio::time::interval(self.settings.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The orphan sweep: at start, then every `sweep_interval`.
        let mut sweeps = tokio::time::interval(self.settings.sweep_interval);
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = wake.notified() => self.tick_logged().await,
                _ = interval.tick() => self.tick_logged().await,
                _ = sweeps.tick() => {
                    let report = self.sweep_orphans().await;
                    for e in &report.errors {
                        tracing::warn!(error = %e, "orphan sweep");
                    }
                    if report.swept {
                        tracing::info!(seen = report.seen, terminated = report.terminated.len(), alerts = report.alerts.len(), "orphan sweep done");
                    }
                }
            }
        }
        for backend in &self.router.backends {
            backend.shutdown().await;
        }
    }

    async fn tick_logged(&self) {
        let result = self.tick().await;
        if let Some(health) = &self.health {
            health.ticked(self.clock.now());
        }
        match result {
            Ok(report) => {
                for e in &report.errors {
                    tracing::warn!(error = %e, "job engine");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retryable = e.is_retryable(), "job engine tick failed")
            }
        }
    }

    /// One round of work. Never sleeps and spawns nothing; per-job problems land in
    /// `TickReport::errors`, a failing scan of the database ends the tick with an error.
    pub async fn tick(&self) -> Result<TickReport> {
        let now = self.clock.now();
        let mut report = TickReport::default();
        self.admit(now, &mut report).await?;
        self.time_out(now, &mut report).await?;
        self.take_nudges(&mut report).await;
        self.advance_runs(now, &mut report).await?;
        self.reap(now, &mut report).await?;
        let gate_errors = self.router.refresh_gates(now).await;
        report.errors.extend(gate_errors);
        self.dispatch(now, &mut report).await?;
        // After training's dispatch: sample batches take the room training left.
        self.advance_samples(now, &mut report).await?;
        Ok(report)
    }

    pub(crate) fn lease_from(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono_duration(self.settings.lease)
    }

    pub(crate) fn backend(&self, name: &str) -> Option<&Arc<dyn TrainingBackend>> {
        self.router.backends.iter().find(|b| b.name() == name)
    }

    /// This engine looks after `run`: it started it, on a backend it has.
    pub(crate) fn is_mine(&self, run: &TrainingRun) -> bool {
        run.engine == self.settings.worker_id && self.backend(&run.backend).is_some()
    }

    /// This engine looks after `run`: it is its own, or it ended on a backend any replica can
    /// reach (a dead replica's run whose instance must still be ended: settling and ending are
    /// idempotent, so two replicas doing it is harmless).
    pub(crate) fn looks_after(&self, run: &TrainingRun) -> bool {
        self.is_mine(run)
            || (run.outcome.is_some()
                && self
                    .backend(&run.backend)
                    .is_some_and(|b| b.scope() == Scope::Shared))
    }

    /// Runs `steps`, at most `concurrency` at a time.
    pub(crate) async fn all<T: Send>(&self, steps: Vec<BoxFuture<'_, T>>) -> Vec<T> {
        stream::iter(steps)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await
    }

    pub(crate) async fn with_timeout<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<T, BackendError>>,
    ) -> std::result::Result<T, BackendError> {
        match tokio::time::timeout(self.settings.call_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Transient(format!(
                "{what}: no answer within {}",
                human_duration(self.settings.call_timeout)
            ))),
        }
    }

    /// Applies `event` through the status machine. `false` when the job moved on meanwhile (a
    /// cancel raced us): that is not an error, the next tick sees the new status.
    pub(crate) async fn apply(
        &self,
        id: LoraId,
        event: StatusEvent,
        error: Option<String>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> bool {
        match self
            .repo
            .apply_event(
                id,
                event,
                EventDetail {
                    error,
                    ..EventDetail::default()
                },
                now,
            )
            .await
        {
            Ok(_) => true,
            Err(DbError::Transition(e)) => {
                tracing::debug!(lora = %id, error = %e, "status moved on before the engine's change");
                false
            }
            Err(e) => {
                report
                    .errors
                    .push(format!("{} of LoRA {id}: {e}", event.as_str()));
                false
            }
        }
    }

    // --- admit ------------------------------------------------------------------------------

    async fn admit(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        for id in self.repo.pending_ids(self.settings.admit_batch).await? {
            if self
                .apply(id, StatusEvent::Enqueue, None, now, report)
                .await
            {
                report.admitted.push(id);
            }
        }
        Ok(())
    }

    // --- timeouts ---------------------------------------------------------------------------

    /// Jobs training longer than the timeout: their run's outcome becomes `timed_out` (which
    /// fails the job and ends the instance below); a job with no run yet fails at once.
    async fn time_out(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        let cutoff = now - chrono_duration(self.settings.job_timeout);
        let late = self.repo.jobs_running_longer_than(cutoff).await?;
        if late.is_empty() {
            return Ok(());
        }
        let current = self.current_runs().await?;
        let reason = format!(
            "training took longer than {}",
            human_duration(self.settings.job_timeout)
        );
        for job in late {
            let recorded = match current.get(&job.lora_id) {
                Some(run) => match self
                    .repo
                    .record_run_outcome(run.id, "timed_out", Some(&reason), None, now)
                    .await
                {
                    Ok(_) => true,
                    Err(e) => {
                        report.errors.push(format!(
                            "timing out run {} of LoRA {}: {e}",
                            run.id, job.lora_id
                        ));
                        false
                    }
                },
                None => {
                    self.apply(
                        job.lora_id,
                        StatusEvent::Fail,
                        Some(outcome::describe("timed_out", Some(&reason))),
                        now,
                        report,
                    )
                    .await
                }
            };
            if recorded {
                tracing::info!(lora = %job.lora_id, started_at = %job.started_at, "job timed out");
                report.timed_out.push(job.lora_id);
            }
        }
        Ok(())
    }

    // --- the reaper -------------------------------------------------------------------------

    /// Jobs whose lease expired: their run's outcome becomes `lease_expired` and is settled here
    /// (the run may be another engine's, gone with its engine). A job claimed but never launched
    /// goes back to the queue without using an attempt.
    async fn reap(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        let expired = self.repo.expired_leases(now).await?;
        if expired.is_empty() {
            return Ok(());
        }
        let open: HashMap<LoraId, OpenRun> = self
            .repo
            .open_runs()
            .await?
            .into_iter()
            .filter(|o| o.current)
            .map(|o| (o.run.lora_id, o))
            .collect();
        for lease in expired {
            let why = format!(
                "lease expired at {}",
                lease.lease_until.format("%Y-%m-%d %H:%M:%S UTC")
            );
            match open.get(&lease.lora_id) {
                Some(o) => {
                    if let Err(e) = self
                        .repo
                        .record_run_outcome(o.run.id, "lease_expired", Some(&why), None, now)
                        .await
                    {
                        report
                            .errors
                            .push(format!("reaping LoRA {}: {e}", lease.lora_id));
                        continue;
                    }
                    match self.repo.get_run(o.run.id).await {
                        Ok(Some(run)) => {
                            let o = OpenRun { run, ..o.clone() };
                            let step = self.advance(&o, None, now).await;
                            report.merge(step);
                        }
                        Ok(None) => {}
                        Err(e) => report
                            .errors
                            .push(format!("reaping LoRA {}: {e}", lease.lora_id)),
                    }
                }
                None => {
                    let reason = format!(
                        "the engine that claimed the job stopped before launching it ({why})"
                    );
                    if lease.attempt >= self.settings.max_runs {
                        let reason = format!("{reason}; not retried after {} runs", lease.attempt);
                        if self
                            .apply(lease.lora_id, StatusEvent::Fail, Some(reason), now, report)
                            .await
                        {
                            report.failed.push(lease.lora_id);
                        }
                    } else if self
                        .apply(
                            lease.lora_id,
                            StatusEvent::Requeue,
                            Some(reason),
                            now,
                            report,
                        )
                        .await
                    {
                        report.requeued.push(lease.lora_id);
                    }
                }
            }
        }
        Ok(())
    }
}
