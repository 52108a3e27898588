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
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};

use loraforge_db::{BreakerTransition, DbError, EventDetail, OpenRun, Repository, Settle};
use loraforge_domain::outcome::{self, Disposition, Origin};
use loraforge_domain::{Clock, LoraId, MicroUsd, RunId, StatusEvent, TrainingRun, TrainingStatus};

use crate::Result;
use crate::after_training::AfterTraining;
use crate::backend::{
    BackendError, Ending, Instance, Observed, Scope, Termination, TrainingBackend, WorkerTokens,
};
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
    observed_at: Mutex<HashMap<String, DateTime<Utc>>>,
    /// When this engine was made: a run of this engine's name created earlier was started by a
    /// predecessor (the service restarted while it ran).
    started_at: DateTime<Utc>,
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
        self.advance_runs(now, &mut report).await?;
        self.reap(now, &mut report).await?;
        self.dispatch(now, &mut report).await?;
        Ok(report)
    }

    pub(crate) fn lease_from(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono_duration(self.settings.lease)
    }

    fn backend(&self, name: &str) -> Option<&Arc<dyn TrainingBackend>> {
        self.router.backends.iter().find(|b| b.name() == name)
    }

    /// This engine looks after `run`: it started it, on a backend it has.
    fn is_mine(&self, run: &TrainingRun) -> bool {
        run.engine == self.settings.worker_id && self.backend(&run.backend).is_some()
    }

    /// This engine looks after `run`: it is its own, or it ended on a backend any replica can
    /// reach (a dead replica's run whose instance must still be ended: settling and ending are
    /// idempotent, so two replicas doing it is harmless).
    fn looks_after(&self, run: &TrainingRun) -> bool {
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

    /// The current run of every job that has one, by LoRA.
    async fn current_runs(&self) -> Result<HashMap<LoraId, TrainingRun>> {
        Ok(self
            .repo
            .open_runs()
            .await?
            .into_iter()
            .filter(|o| o.current)
            .map(|o| (o.run.lora_id, o.run))
            .collect())
    }

    // --- runs -------------------------------------------------------------------------------

    async fn advance_runs(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        let open: Vec<OpenRun> = self
            .repo
            .open_runs()
            .await?
            .into_iter()
            .filter(|o| self.looks_after(&o.run))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        let observed = self.observe(now, &open, report).await;
        let steps: Vec<BoxFuture<'_, TickReport>> = open
            .iter()
            .map(|o| self.advance(o, observed.get(&o.run.id), now).boxed())
            .collect();
        let steps = self.all(steps).await;
        for s in steps {
            report.merge(s);
        }
        Ok(())
    }

    /// Asks each backend (one call each, concurrently, when its `observe_every` has passed) about
    /// the instances of runs without an outcome.
    async fn observe(
        &self,
        now: DateTime<Utc>,
        open: &[OpenRun],
        report: &mut TickReport,
    ) -> HashMap<RunId, Observed> {
        let mut by_backend: HashMap<&str, Vec<&TrainingRun>> = HashMap::new();
        for o in open.iter().filter(|o| o.run.outcome.is_none()) {
            by_backend
                .entry(o.run.backend.as_str())
                .or_default()
                .push(&o.run);
        }
        let due: Vec<(&Arc<dyn TrainingBackend>, Vec<&TrainingRun>)> = {
            let mut last = self.observed_at.lock().unwrap_or_else(|e| e.into_inner());
            by_backend
                .into_iter()
                .filter_map(|(name, runs)| {
                    let backend = self.backend(name)?;
                    let every = chrono_duration(backend.observe_every());
                    if last.get(name).is_some_and(|at| now < *at + every) {
                        return None;
                    }
                    last.insert(name.to_owned(), now);
                    Some((backend, runs))
                })
                .collect()
        };
        let calls: Vec<BoxFuture<'_, _>> = due
            .into_iter()
            .map(|(backend, runs)| {
                async move {
                    let instances: Vec<Instance> = runs.iter().map(|r| instance_of(r)).collect();
                    let what = format!("observing {} runs", backend.name());
                    let seen = self.with_timeout(&what, backend.observe(&instances)).await;
                    (backend.name().to_owned(), runs, seen)
                }
                .boxed()
            })
            .collect();
        let mut observed = HashMap::new();
        for (name, runs, seen) in futures::future::join_all(calls).await {
            match seen {
                Ok(states) if states.len() == runs.len() => {
                    observed.extend(runs.iter().map(|r| r.id).zip(states));
                }
                Ok(states) => report.errors.push(format!(
                    "backend {name} answered for {} of {} instances; ignored",
                    states.len(),
                    runs.len()
                )),
                Err(e) => report
                    .errors
                    .push(format!("observing the runs on {name}: {e}")),
            }
        }
        observed
    }

    /// One run's step: record how it ended (if it did, or if its job no longer wants it),
    /// settle that on its job, and end its instance.
    async fn advance(
        &self,
        o: &OpenRun,
        observed: Option<&Observed>,
        now: DateTime<Utc>,
    ) -> TickReport {
        let mut r = TickReport::default();
        let mut run = o.run.clone();
        let lora = run.lora_id;
        let wanted = o.current && o.job_status == TrainingStatus::Training;
        let mut gone_already = false;

        if run.outcome.is_none() {
            let ended: Option<(&str, Option<String>)> = if !wanted {
                Some(match o.job_status {
                    TrainingStatus::Cancelled => ("cancelled", None),
                    s => ("superseded", Some(format!("the job is {s} now"))),
                })
            } else {
                match observed {
                    Some(Observed::Running) => {
                        if o.job_worker.as_deref() == Some(self.settings.worker_id.as_str()) {
                            match self
                                .repo
                                .heartbeat(
                                    lora,
                                    &self.settings.worker_id,
                                    self.lease_from(now),
                                    now,
                                )
                                .await
                            {
                                Ok(_) => r.watched.push(lora),
                                Err(e) => r.errors.push(format!("heartbeat of LoRA {lora}: {e}")),
                            }
                        }
                        None
                    }
                    Some(Observed::Ended {
                        outcome,
                        reason,
                        gone,
                    }) => {
                        gone_already = *gone;
                        Some((outcome, reason.clone()))
                    }
                    None => None,
                }
            };
            let Some((code, reason)) = ended else {
                return r;
            };
            if let Err(e) = self
                .repo
                .record_run_outcome(run.id, code, reason.as_deref(), None, now)
                .await
            {
                r.errors.push(format!(
                    "recording the end of run {} of LoRA {lora}: {e}",
                    run.id
                ));
                return r;
            }
            match self.repo.get_run(run.id).await {
                Ok(Some(fresh)) => run = fresh,
                Ok(None) => return r,
                Err(e) => {
                    r.errors
                        .push(format!("reading run {} of LoRA {lora}: {e}", run.id));
                    return r;
                }
            }
        }

        let mut job_status = o.job_status;
        if run.settled_at.is_none()
            && let Some(status) = self.settle(o, &run, now, &mut r).await
        {
            job_status = status;
        }
        self.end_instance(&run, gone_already, job_status, now, &mut r)
            .await;
        r
    }

    /// Acts on the run's outcome (once); returns the job's status afterwards when it changed.
    async fn settle(
        &self,
        o: &OpenRun,
        run: &TrainingRun,
        now: DateTime<Utc>,
        r: &mut TickReport,
    ) -> Option<TrainingStatus> {
        let lora = run.lora_id;
        if let Some(code) = run.outcome.as_deref()
            && outcome::is_provider_fault(code)
        {
            // Keyed by the run, so replicas settling the same run count it once.
            let why = run.message().unwrap_or_else(|| code.to_owned());
            self.breaker_failure(&run.backend, format!("run:{}", run.id), why, now, r)
                .await;
        }
        let settle = match self.settlement(o, run, now).await {
            Ok(s) => s,
            Err(e) => {
                r.errors.push(format!("after training of LoRA {lora}: {e}"));
                return None;
            }
        };
        let (kind, reason) = match &settle {
            Settle::Requeue { reason, .. } => ("requeued", Some(reason.clone())),
            Settle::Fail { reason } | Settle::Reject { reason, .. } => {
                ("failed", Some(reason.clone()))
            }
            Settle::Publish { .. } => ("published", None),
            Settle::Nothing => ("nothing", None),
        };
        match self.repo.settle_run(run.id, settle, now).await {
            Ok(Some(model)) => {
                match kind {
                    "requeued" if model.status == TrainingStatus::Queued => r.requeued.push(lora),
                    "failed" if model.status == TrainingStatus::Failed => r.failed.push(lora),
                    "published" => r.published.push(lora),
                    _ => {}
                }
                if kind != "nothing" {
                    tracing::info!(lora = %lora, attempt = run.attempt, outcome = ?run.outcome, status = %model.status,
                        reason = ?reason, "run settled");
                }
                Some(model.status)
            }
            Ok(None) => None,
            Err(e) => {
                r.errors
                    .push(format!("settling run {} of LoRA {lora}: {e}", run.id));
                None
            }
        }
    }

    /// What the job does about the run's recorded outcome.
    async fn settlement(
        &self,
        o: &OpenRun,
        run: &TrainingRun,
        now: DateTime<Utc>,
    ) -> std::result::Result<Settle, String> {
        if !(o.current && o.job_status == TrainingStatus::Training) {
            return Ok(Settle::Nothing);
        }
        let message = run.message().unwrap_or_else(|| "the run ended".to_owned());
        match run.disposition().unwrap_or(Disposition::Fail) {
            Disposition::Trained => {
                let lora = self
                    .repo
                    .get_lora(run.lora_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the LoRA is gone")?;
                match self.after.decide(&lora, run).await {
                    Ok(Settle::Requeue { counted, reason }) => {
                        let (counted, reason) = self.restart_spared(run, counted, reason);
                        Ok(self.retry_or_fail(o, counted, reason))
                    }
                    Ok(settle) => Ok(settle),
                    Err(e) => {
                        let since = run.ended_at.unwrap_or(now);
                        if now - since >= chrono_duration(self.settings.after_training_give_up) {
                            Ok(Settle::Fail {
                                reason: format!(
                                    "the trained files could not be checked for {}: {e}",
                                    human_duration(self.settings.after_training_give_up)
                                ),
                            })
                        } else {
                            Err(e)
                        }
                    }
                }
            }
            Disposition::Retry { counted } => {
                let (counted, message) = self.restart_spared(run, counted, message);
                Ok(self.retry_or_fail(o, counted, message))
            }
            Disposition::Fail => Ok(Settle::Fail { reason: message }),
            Disposition::Moot => Ok(Settle::Nothing),
        }
    }

    /// A run this engine's predecessor started (the service crashed or restarted while it ran)
    /// does not use up one of the job's attempts, whatever it ended with: its worker lost its
    /// control plane, its files' links and its parent mid-run, which is no fault of the job.
    /// (`max_runs` still bounds the job.)
    fn restart_spared(&self, run: &TrainingRun, counted: bool, message: String) -> (bool, String) {
        if counted && run.engine == self.settings.worker_id && run.created_at < self.started_at {
            let note =
                "; the service restarted during this run, so it does not count as a failed attempt";
            (false, format!("{message}{note}"))
        } else {
            (counted, message)
        }
    }

    /// Another run, unless the job has used up its attempts (runs that failed through their own
    /// fault) or its runs in all.
    fn retry_or_fail(&self, o: &OpenRun, counted: bool, message: String) -> Settle {
        let failures = o.job_failures + u32::from(counted);
        if counted && failures >= self.settings.max_attempts {
            Settle::Fail {
                reason: format!("{message}; not retried after {failures} failed attempts"),
            }
        } else if o.job_attempt >= self.settings.max_runs {
            Settle::Fail {
                reason: format!("{message}; not retried after {} runs", o.job_attempt),
            }
        } else {
            Settle::Requeue {
                counted,
                reason: message,
            }
        }
    }

    /// Ends the instance of a run that ended, and records its cost once it is confirmed gone.
    async fn end_instance(
        &self,
        run: &TrainingRun,
        gone_already: bool,
        job_status: TrainingStatus,
        now: DateTime<Utc>,
        r: &mut TickReport,
    ) {
        let lora = run.lora_id;
        if run.outcome.is_none() {
            return;
        }
        // Only a replica with the run's backend can end it.
        let Some(backend) = self.backend(&run.backend) else {
            return;
        };
        // Processes on another engine's host cannot be reached from here: they end with their
        // worker (which stops once the control plane refuses it) or with their host.
        let elsewhere = backend.scope() == Scope::Engine && run.engine != self.settings.worker_id;
        let termination = if gone_already || elsewhere {
            Termination {
                gone: true,
                billed_millis: None,
            }
        } else {
            if run.next_terminate_at.is_some_and(|at| now < at) {
                return;
            }
            // The control plane ended this run: stop it now. The worker ended it: let it exit.
            let by_us = run
                .outcome
                .as_deref()
                .and_then(outcome::spec)
                .is_none_or(|s| s.origin == Origin::ControlPlane);
            let ending = if by_us {
                Ending::Stop
            } else {
                Ending::Finished
            };
            match self
                .with_timeout(
                    "ending an instance",
                    backend.terminate(&instance_of(run), ending),
                )
                .await
            {
                Ok(t) => {
                    if !t.gone && ending == Ending::Stop && !r.stopped_runs.contains(&lora) {
                        r.stopped_runs.push(lora);
                    }
                    t
                }
                Err(e) => {
                    let delays = &self.settings.terminate_retry_delays;
                    let i = (run.terminate_failures as usize).min(delays.len().saturating_sub(1));
                    let next = now
                        + chrono_duration(
                            delays.get(i).copied().unwrap_or(Duration::from_secs(60)),
                        );
                    match self
                        .repo
                        .record_terminate_failure(run.id, &e.to_string(), next)
                        .await
                    {
                        Ok(n) if n as usize >= delays.len() => tracing::error!(
                            lora = %lora, run = %run.id, backend = %run.backend, instance = %run.provider_id, tries = n,
                            error = %e, "operator alert: an instance could not be terminated; it may still cost money"
                        ),
                        Ok(_) => {}
                        Err(db) => r.errors.push(format!(
                            "recording a failed termination of run {}: {db}",
                            run.id
                        )),
                    }
                    r.errors.push(format!(
                        "ending run {} of LoRA {lora} on {}: {e}",
                        run.id, run.backend
                    ));
                    return;
                }
            }
        };
        if !termination.gone {
            return;
        }
        let past_training = !matches!(
            job_status,
            TrainingStatus::Pending | TrainingStatus::Queued | TrainingStatus::Training
        );
        if !past_training {
            // Before the record: the job's next attempt starts only once this one is recorded
            // gone, and must find what this one handed over.
            backend.retire(&instance_of(run)).await;
        }
        let cost = cost_of(run, termination.billed_millis, now);
        match self.repo.record_instance_gone(run.id, cost, now).await {
            Ok(true) => {
                tracing::info!(lora = %lora, attempt = run.attempt, backend = %run.backend, %cost, "instance gone");
                r.gone.push(lora);
                // Past training for good: what the backend and the blob store kept for a resume
                // is of no more use.
                if past_training {
                    let published = matches!(
                        job_status,
                        TrainingStatus::Validating | TrainingStatus::Completed
                    );
                    backend.release(lora, published).await;
                    match self.repo.get_lora(lora).await {
                        Ok(Some(model)) => match self.after.forget_checkpoints(&model).await {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::info!(lora = %lora, checkpoints = n, "checkpoints deleted")
                            }
                            Err(e) => r
                                .errors
                                .push(format!("deleting the checkpoints of LoRA {lora}: {e}")),
                        },
                        Ok(None) => {}
                        Err(e) => r
                            .errors
                            .push(format!("deleting the checkpoints of LoRA {lora}: {e}")),
                    }
                }
            }
            Ok(false) => {}
            Err(e) => r.errors.push(format!(
                "recording the end of the instance of run {}: {e}",
                run.id
            )),
        }
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

fn instance_of(run: &TrainingRun) -> Instance {
    Instance {
        provider_id: run.provider_id.clone(),
        instance_name: run.instance_name.clone(),
        lora_id: run.lora_id,
        attempt: run.attempt,
    }
}

/// What a run cost: its billed time (the provider's, else from creation to the confirmed end)
/// at its price per hour.
fn cost_of(run: &TrainingRun, billed_millis: Option<u64>, now: DateTime<Utc>) -> MicroUsd {
    let Some(price) = run.price_per_hour else {
        return MicroUsd::ZERO;
    };
    let millis = billed_millis
        .unwrap_or_else(|| u64::try_from((now - run.created_at).num_milliseconds()).unwrap_or(0));
    price.per_hour_for_millis(millis)
}
