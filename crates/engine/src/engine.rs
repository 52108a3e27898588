//! The engine and its tick. Every step reads what it needs from the database and writes its
//! decisions back, so nothing is lost when the process dies between two steps: a claimed job
//! with no run is reaped when its lease ends, a run whose engine restarted is found by
//! `live_runs` and re-attached or requeued.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use loraforge_db::{DbError, EventDetail, LiveRun, Repository};
use loraforge_domain::{Clock, LoraId, StatusEvent};

use crate::backend::{JobSpec, RunId, RunState, SpecImage, TrainingBackend, WorkerTokens};
use crate::outcome::{RunOutcome, outcome_of_exit};
use crate::settings::{EngineSettings, chrono_duration, human_duration};
use crate::{BackendError, Result};

/// What one tick did, for tests and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// pending → queued.
    pub admitted: Vec<LoraId>,
    /// Progress reports written (after coalescing per job).
    pub progress: usize,
    /// Runs started on a backend.
    pub started: Vec<LoraId>,
    /// Starts that failed with a retryable error and will be tried again later.
    pub start_retries: Vec<LoraId>,
    /// Runs that ended well (exit 0) after their worker reported the result.
    pub trained: Vec<LoraId>,
    /// Jobs put back in the queue (lost or stopped runs, expired leases).
    pub requeued: Vec<LoraId>,
    /// Jobs failed (by their run's exit, a start failure, or running out of attempts).
    pub failed: Vec<LoraId>,
    /// Jobs failed for running longer than the timeout.
    pub timed_out: Vec<LoraId>,
    /// Runs told to stop because their job no longer wants them (cancelled, requeued, failed).
    pub stopped_runs: Vec<LoraId>,
    /// Runs that are still going and were found again (heartbeat sent).
    pub watched: Vec<LoraId>,
    /// Per-job problems that did not stop the tick.
    pub errors: Vec<String>,
}

impl TickReport {
    fn note_stopped(&mut self, id: LoraId) {
        if !self.stopped_runs.contains(&id) {
            self.stopped_runs.push(id);
        }
    }
}

#[derive(Debug)]
pub struct Engine {
    repo: Arc<dyn Repository>,
    clock: Arc<dyn Clock>,
    backends: Vec<Arc<dyn TrainingBackend>>,
    settings: EngineSettings,
    tokens: Option<Arc<dyn WorkerTokens>>,
}

impl Engine {
    pub fn new(
        repo: Arc<dyn Repository>,
        clock: Arc<dyn Clock>,
        backends: Vec<Arc<dyn TrainingBackend>>,
        settings: EngineSettings,
    ) -> Self {
        Self { repo, clock, backends, settings, tokens: None }
    }

    /// Gives every started attempt a worker token from `tokens`.
    pub fn with_worker_tokens(mut self, tokens: Arc<dyn WorkerTokens>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Ticks every `poll_interval` until `shutdown` resolves, then asks the backends to stop their
    /// runs gracefully (the trainer checkpoints; the next engine requeues and resumes the jobs).
    /// A failing tick is logged and the next one tries again.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        self.run_with_wake(Arc::new(tokio::sync::Notify::new()), shutdown).await;
    }

    /// [`Self::run`], also ticking at once whenever `wake` is notified (the API does on every
    /// change: a new LoRA starts without waiting for the next poll, a cancel takes effect at
    /// once).
    pub async fn run_with_wake(self, wake: Arc<tokio::sync::Notify>, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let mut interval = tokio::time::interval(self.settings.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = wake.notified() => self.tick_logged().await,
                _ = interval.tick() => self.tick_logged().await,
            }
        }
        for backend in &self.backends {
            backend.shutdown().await;
        }
    }

    async fn tick_logged(&self) {
        match self.tick().await {
            Ok(report) => {
                for e in &report.errors {
                    tracing::warn!(error = %e, "job engine");
                }
            }
            Err(e) => tracing::warn!(error = %e, retryable = e.is_retryable(), "job engine tick failed"),
        }
    }

    /// One round of work. Never sleeps and spawns nothing; per-job problems land in
    /// `TickReport::errors`, a failing scan of the database ends the tick with an error.
    pub async fn tick(&self) -> Result<TickReport> {
        let now = self.clock.now();
        let mut report = TickReport::default();
        self.relay_progress(now, &mut report).await;
        self.admit(now, &mut report).await?;
        self.watch_runs(now, &mut report).await?;
        self.time_out(now, &mut report).await?;
        self.reap(now, &mut report).await?;
        self.dispatch(now, &mut report).await?;
        Ok(report)
    }

    fn lease_from(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono_duration(self.settings.lease)
    }

    fn backend(&self, name: &str) -> Option<&Arc<dyn TrainingBackend>> {
        self.backends.iter().find(|b| b.name() == name)
    }

    fn free_backend(&self) -> Option<&Arc<dyn TrainingBackend>> {
        self.backends.iter().find(|b| b.capacity() > 0)
    }

    /// Applies `event` through the status machine. `None` when the job moved on meanwhile (a
    /// cancel raced us): that is not an error, the next tick sees the new status.
    async fn apply(
        &self,
        id: LoraId,
        event: StatusEvent,
        error: Option<String>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> bool {
        match self.repo.apply_event(id, event, EventDetail { error, ..EventDetail::default() }, now).await {
            Ok(_) => true,
            Err(DbError::Transition(e)) => {
                tracing::debug!(lora = %id, error = %e, "status moved on before the engine's change");
                false
            }
            Err(e) => {
                report.errors.push(format!("{} of LoRA {id}: {e}", event.as_str()));
                false
            }
        }
    }

    /// A run of the job was lost (`why`): requeue it, or fail it once it has had its attempts.
    async fn requeue_or_fail(&self, id: LoraId, attempt: u32, why: &str, now: DateTime<Utc>, report: &mut TickReport) {
        if attempt < self.settings.max_attempts {
            if self.apply(id, StatusEvent::Requeue, Some(why.to_owned()), now, report).await {
                tracing::info!(lora = %id, attempt, reason = why, "job requeued");
                report.requeued.push(id);
            }
        } else {
            let reason = format!("{why}; not retried after {attempt} attempts");
            if self.apply(id, StatusEvent::Fail, Some(reason.clone()), now, report).await {
                tracing::info!(lora = %id, attempt, %reason, "job failed");
                report.failed.push(id);
            }
        }
    }

    /// Stops a run on its backend, if this engine can reach it.
    async fn stop_run(&self, run: &LiveRun, report: &mut TickReport) {
        let Some(backend) = self.backend(&run.backend) else { return };
        match backend.cancel(&RunId(run.run_id.clone())).await {
            Ok(()) => report.note_stopped(run.lora_id),
            Err(e) => report.errors.push(format!("stopping run {} of LoRA {}: {e}", run.run_id, run.lora_id)),
        }
    }

    fn is_mine(&self, run: &LiveRun) -> bool {
        run.worker.as_deref() == Some(self.settings.worker_id.as_str()) && self.backend(&run.backend).is_some()
    }

    // --- (0) progress ---------------------------------------------------------------------

    /// Progress lines the backends collected → `record_progress`, and each extends the job's
    /// lease. A run whose job is no longer leased to this engine is stopped instead.
    async fn relay_progress(&self, now: DateTime<Utc>, report: &mut TickReport) {
        for backend in &self.backends {
            // Only the latest report of each run matters.
            let mut latest = HashMap::new();
            for r in backend.drain_reports() {
                latest.insert(r.run_id.clone(), r);
            }
            for (run_id, r) in latest {
                match self.repo.heartbeat(r.lora_id, &self.settings.worker_id, self.lease_from(now), now).await {
                    Ok(true) => match self.repo.record_progress(r.lora_id, &r.progress, now).await {
                        Ok(()) => report.progress += 1,
                        Err(e) => report.errors.push(format!("progress of LoRA {}: {e}", r.lora_id)),
                    },
                    Ok(false) => {
                        // The job was requeued, cancelled or taken over meanwhile.
                        tracing::info!(lora = %r.lora_id, run = %run_id, "run no longer holds its job; stopping it");
                        match backend.cancel(&run_id).await {
                            Ok(()) => report.note_stopped(r.lora_id),
                            Err(e) => report.errors.push(format!("stopping run {run_id}: {e}")),
                        }
                    }
                    Err(e) => report.errors.push(format!("heartbeat of LoRA {}: {e}", r.lora_id)),
                }
            }
        }
    }

    // --- (a) admit ------------------------------------------------------------------------

    async fn admit(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        for id in self.repo.pending_ids(self.settings.admit_batch).await? {
            if self.apply(id, StatusEvent::Enqueue, None, now, report).await {
                report.admitted.push(id);
            }
        }
        Ok(())
    }

    // --- (d, f) runs: exits, cancellations, re-attaching after a restart --------------------

    async fn watch_runs(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        use loraforge_domain::TrainingStatus as S;
        for run in self.repo.live_runs().await? {
            // Another engine's run (or a backend this one lacks): its own engine watches it, and
            // the reaper catches it if that engine is gone.
            if !self.is_mine(&run) {
                continue;
            }
            let Some(backend) = self.backend(&run.backend) else { continue };
            let run_id = RunId(run.run_id.clone());
            let state = match backend.status(&run_id).await {
                Ok(s) => s,
                Err(e) => {
                    report.errors.push(format!("status of run {run_id} of LoRA {}: {e}", run.lora_id));
                    continue;
                }
            };
            let gone = match (run.status, state) {
                (S::Training, RunState::Running) => {
                    // Alive under this engine's supervision: keep the lease.
                    match self.repo.heartbeat(run.lora_id, &self.settings.worker_id, self.lease_from(now), now).await {
                        Ok(true) => report.watched.push(run.lora_id),
                        Ok(false) => self.stop_run(&run, report).await,
                        Err(e) => report.errors.push(format!("heartbeat of LoRA {}: {e}", run.lora_id)),
                    }
                    false
                }
                (S::Training, RunState::Exited { code, reason, retryable }) => {
                    match outcome_of_exit(code, reason.as_deref(), retryable) {
                        RunOutcome::Trained => {
                            // A worker reports its result (`/api/v1/worker/jobs/{id}/result`,
                            // which moves the job on) before it exits 0; a job still in
                            // training never got one.
                            let why = "the worker ended without reporting its result";
                            self.requeue_or_fail(run.lora_id, run.attempt, why, now, report).await
                        }
                        RunOutcome::Requeue(why) => {
                            self.requeue_or_fail(run.lora_id, run.attempt, &why, now, report).await
                        }
                        RunOutcome::Fail(reason) => {
                            if self.apply(run.lora_id, StatusEvent::Fail, Some(reason), now, report).await {
                                report.failed.push(run.lora_id);
                            }
                        }
                    }
                    true
                }
                (S::Training, RunState::Unknown) => {
                    let why = format!("the run was lost (backend {} no longer knows run {run_id})", run.backend);
                    self.requeue_or_fail(run.lora_id, run.attempt, &why, now, report).await;
                    true
                }
                // The worker reported its result and is finishing (cleaning up, exiting 0):
                // leave it be.
                (S::Validating | S::Completed, RunState::Running) => false,
                // The job no longer wants this run (cancelled, failed, requeued): make sure it
                // stops, and forget it once it has.
                (_, RunState::Running) => {
                    self.stop_run(&run, report).await;
                    false
                }
                (_, RunState::Exited { code, .. }) => {
                    if code == Some(0) {
                        report.trained.push(run.lora_id);
                    }
                    true
                }
                (_, RunState::Unknown) => true,
            };
            if gone {
                match self.repo.clear_run(run.lora_id, &run.run_id).await {
                    Ok(_) => {}
                    Err(e) => report.errors.push(format!("forgetting run {run_id} of LoRA {}: {e}", run.lora_id)),
                }
                // Past training for good: what the backend kept for a resume is of no more use.
                // (A requeued job keeps it; a job that was training when its run ended was
                // decided above and is looked at again on the next tick.)
                if !matches!(run.status, S::Training | S::Queued | S::Pending) {
                    backend.release(&run_id, run.lora_id).await;
                }
            }
        }
        Ok(())
    }

    // --- (c) timeouts ---------------------------------------------------------------------

    async fn time_out(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        let cutoff = now - chrono_duration(self.settings.job_timeout);
        let late = self.repo.jobs_running_longer_than(cutoff).await?;
        if late.is_empty() {
            return Ok(());
        }
        let runs: HashMap<LoraId, LiveRun> = self.repo.live_runs().await?.into_iter().map(|r| (r.lora_id, r)).collect();
        for job in late {
            // Kill first, then fail: a failed job's run is also stopped by `watch_runs` on the
            // engine that owns it, should this one not reach it.
            if let Some(run) = runs.get(&job.lora_id).filter(|r| self.is_mine(r)) {
                self.stop_run(run, report).await;
            }
            let reason = format!("training took longer than {}", human_duration(self.settings.job_timeout));
            if self.apply(job.lora_id, StatusEvent::Fail, Some(reason), now, report).await {
                tracing::info!(lora = %job.lora_id, started_at = %job.started_at, "job timed out");
                report.timed_out.push(job.lora_id);
            }
        }
        Ok(())
    }

    // --- (b) the reaper -------------------------------------------------------------------

    async fn reap(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        let expired = self.repo.expired_leases(now).await?;
        if expired.is_empty() {
            return Ok(());
        }
        let runs: HashMap<LoraId, LiveRun> = self.repo.live_runs().await?.into_iter().map(|r| (r.lora_id, r)).collect();
        for lease in expired {
            if let Some(run) = runs.get(&lease.lora_id).filter(|r| self.is_mine(r)) {
                self.stop_run(run, report).await;
            }
            let why = format!(
                "the worker stopped reporting (lease expired at {})",
                lease.lease_until.format("%Y-%m-%d %H:%M:%S UTC")
            );
            self.requeue_or_fail(lease.lora_id, lease.attempt, &why, now, report).await;
        }
        Ok(())
    }

    // --- (e) dispatch ---------------------------------------------------------------------

    async fn dispatch(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        // Starts whose retry is due come before new claims: they are older.
        for due in self.repo.starts_due(&self.settings.worker_id, now).await? {
            let Some(backend) = self.free_backend().cloned() else {
                // Keep the lease while waiting for a slot.
                if let Err(e) =
                    self.repo.heartbeat(due.lora_id, &self.settings.worker_id, self.lease_from(now), now).await
                {
                    report.errors.push(format!("heartbeat of LoRA {}: {e}", due.lora_id));
                }
                continue;
            };
            self.start(due.lora_id, due.attempt, due.start_failures, &backend, now, report).await;
        }
        // Every claim is followed by a start on a backend that had a slot, so this loop ends
        // when the slots or the queue run out.
        let slots: usize = self.backends.iter().map(|b| b.capacity()).sum();
        for _ in 0..slots {
            let Some(backend) = self.free_backend().cloned() else { break };
            let claimed = self
                .repo
                .claim_next_job(&self.settings.worker_id, self.settings.max_active_per_user, self.lease_from(now), now)
                .await?;
            let Some(job) = claimed else { break };
            self.start(job.lora.id, job.attempt, 0, &backend, now, report).await;
        }
        Ok(())
    }

    /// Starts a run of a job this engine has claimed. `failures`: failed starts so far.
    async fn start(
        &self,
        id: LoraId,
        attempt: u32,
        failures: u32,
        backend: &Arc<dyn TrainingBackend>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) {
        let spec = match self.job_spec(id, attempt).await {
            Ok(Some(spec)) => spec,
            Ok(None) => {
                let reason = "the LoRA's dataset no longer exists".to_owned();
                if self.apply(id, StatusEvent::Fail, Some(reason), now, report).await {
                    report.failed.push(id);
                }
                return;
            }
            Err(e) => {
                // The lease stays with us; if this keeps failing the reaper requeues the job.
                report.errors.push(format!("job spec of LoRA {id}: {e}"));
                return;
            }
        };
        match backend.start(&spec).await {
            Ok(run) => {
                if let Err(e) = self.repo.set_run(id, backend.name(), &run.0).await {
                    // Without a record nobody would watch the run: stop it; the lease expires and
                    // the reaper requeues the job.
                    report.errors.push(format!("recording run {run} of LoRA {id}: {e}"));
                    if let Err(e) = backend.cancel(&run).await {
                        report.errors.push(format!("stopping unrecorded run {run}: {e}"));
                    }
                    return;
                }
                tracing::info!(lora = %id, attempt, backend = backend.name(), run = %run, "run started");
                report.started.push(id);
            }
            Err(e) => self.start_failed(id, failures, &e, now, report).await,
        }
    }

    async fn start_failed(
        &self,
        id: LoraId,
        failures: u32,
        e: &BackendError,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) {
        let delay = usize::try_from(failures).ok().and_then(|i| self.settings.start_retry_delays.get(i));
        match delay {
            Some(delay) if e.is_retryable() => {
                let next = now + chrono_duration(*delay);
                // The lease must outlast the wait.
                let lease = next + chrono_duration(self.settings.lease);
                let recorded = async {
                    self.repo.record_start_failure(id, &e.to_string(), next).await?;
                    self.repo.heartbeat(id, &self.settings.worker_id, lease, now).await
                }
                .await;
                match recorded {
                    Ok(_) => {
                        tracing::info!(lora = %id, error = %e, retry_at = %next, "start failed; will retry");
                        report.start_retries.push(id);
                    }
                    Err(db) => report.errors.push(format!("recording a failed start of LoRA {id}: {db}")),
                }
            }
            _ => {
                let reason = if failures == 0 {
                    format!("training could not start: {e}")
                } else {
                    format!("training could not start after {} attempts: {e}", failures + 1)
                };
                if self.apply(id, StatusEvent::Fail, Some(reason), now, report).await {
                    report.failed.push(id);
                }
            }
        }
    }

    /// What the worker needs for attempt `attempt` of LoRA `id`; `None` if the LoRA or its
    /// dataset is gone.
    async fn job_spec(&self, id: LoraId, attempt: u32) -> Result<Option<JobSpec>> {
        let Some(lora) = self.repo.get_lora(id).await? else { return Ok(None) };
        let Some(dataset) = self.repo.get_dataset(lora.dataset_id).await? else { return Ok(None) };
        let worker_token = match &self.tokens {
            Some(t) => Some(t.issue(id, attempt, &self.settings.worker_id).map_err(crate::EngineError::Token)?),
            None => None,
        };
        Ok(Some(JobSpec {
            lora_id: id,
            attempt,
            params: lora.params,
            images: dataset
                .images
                .into_iter()
                .map(|i| SpecImage { storage_key: i.storage_key, caption: i.caption })
                .collect(),
            worker_token,
        }))
    }
}
