//! Dispatch: claims queued jobs while some backend could take them, routes each (`router.rs`),
//! launches it, records the run with why its backend was chosen, and handles failed launches: a
//! provider-side failure is counted for the backend's circuit breaker, and the retry goes to the
//! next admitted backend at once (fallback); no capacity or a 429 → back to the queue, the
//! backend left alone for a while (a 429 is not counted for the breaker).

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;

use loraforge_db::NewRun;
use loraforge_domain::breaker::BreakerEvent;
use loraforge_domain::run::instance_name;
use loraforge_domain::{LoraId, RunId, StatusEvent};

use crate::Result;
use crate::backend::{BackendError, Ending, Instance, Launch, Scope};
use crate::engine::{CAPACITY_COOL_DOWN, Engine, TickReport};

/// The least and the most a backend that answered 429 is left alone (its `Retry-After` within
/// these; the least when it gave none).
const THROTTLE_WAIT: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(5 * 60),
);
use crate::router::Choice;
use crate::settings::chrono_duration;

impl Engine {
    // --- dispatch ---------------------------------------------------------------------------

    /// Free room per backend: its limit less its instances not confirmed gone (this engine's for
    /// per-engine backends, everyone's for shared ones).
    pub(crate) async fn room(&self) -> Result<Vec<usize>> {
        let open = self.repo.open_runs().await?;
        Ok(self
            .router
            .backends
            .iter()
            .map(|b| {
                let used = open
                    .iter()
                    .filter(|o| o.run.backend == b.name())
                    .filter(|o| {
                        b.scope() == Scope::Shared || o.run.engine == self.settings.worker_id
                    })
                    .count();
                b.max_runs().saturating_sub(used)
            })
            .collect())
    }

    pub(crate) async fn dispatch(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        let mut room = self.room().await?;
        self.router.refresh(&*self.repo, now).await?;
        let mut launches: Vec<(LoraId, u32, u32, Choice)> = Vec::new();
        // Starts whose retry is due come before new claims: they are older.
        for due in self.repo.starts_due(&self.settings.worker_id, now).await? {
            match self.route(due.lora_id, &room, now, report).await {
                Some(c) => {
                    room[c.index] -= 1;
                    launches.push((due.lora_id, due.attempt, due.start_failures, c));
                }
                None if self.router.refusals(now).is_some() => {
                    // Every backend is refused (breakers open, gates shut): the job waits in the
                    // queue, not on this engine, and is claimed again when one recovers.
                    let why = self.router.refusals(now).unwrap_or_default();
                    self.back_to_queue(
                        due.lora_id,
                        &crate::refusals::waiting_message(&why),
                        now,
                        report,
                    )
                    .await;
                }
                None => {
                    // Keep the lease while waiting for room.
                    if let Err(e) = self
                        .repo
                        .heartbeat(
                            due.lora_id,
                            &self.settings.worker_id,
                            self.lease_from(now),
                            now,
                        )
                        .await
                    {
                        report
                            .errors
                            .push(format!("heartbeat of LoRA {}: {e}", due.lora_id));
                    }
                }
            }
        }
        // A job is claimed only while some backend could take it; the claim ends when the room,
        // the admitted backends or the queue run out.
        while self.router.may_route(&room, now) {
            let claimed = self
                .repo
                .claim_next_job(
                    &self.settings.worker_id,
                    self.settings.max_active_per_user,
                    self.lease_from(now),
                    now,
                )
                .await?;
            let Some(job) = claimed else { break };
            match self.route(job.lora.id, &room, now, report).await {
                Some(c) => {
                    room[c.index] -= 1;
                    launches.push((job.lora.id, job.attempt, 0, c));
                }
                None => {
                    // Another replica took the probe meanwhile (or claiming it failed): the job
                    // goes back and the next tick routes again, so a failing database never makes
                    // this loop claim the same job over and over.
                    let why = self
                        .router
                        .wait_reason(&room, now)
                        .unwrap_or_else(|| "every backend is busy".to_owned());
                    self.back_to_queue(
                        job.lora.id,
                        &crate::refusals::waiting_message(&why),
                        now,
                        report,
                    )
                    .await;
                    break;
                }
            }
        }
        let steps: Vec<BoxFuture<'_, TickReport>> = launches
            .into_iter()
            .map(|(lora, attempt, failures, c)| {
                self.launch(lora, attempt, failures, c, now).boxed()
            })
            .collect();
        let steps = self.all(steps).await;
        for s in steps {
            report.merge(s);
        }
        self.explain_refusals(&room, now, report).await;
        Ok(())
    }

    async fn route(
        &self,
        lora: LoraId,
        room: &[usize],
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Option<Choice> {
        self.router
            .choose(
                &*self.repo,
                &self.settings.worker_id,
                lora,
                room,
                now,
                report,
            )
            .await
    }

    /// Puts a claimed job that has no run back in the queue without using an attempt.
    async fn back_to_queue(
        &self,
        lora: LoraId,
        message: &str,
        now: DateTime<Utc>,
        r: &mut TickReport,
    ) {
        self.router.forget(lora);
        match self
            .repo
            .unclaim(lora, &self.settings.worker_id, message, now)
            .await
        {
            Ok(true) => r.waiting.push(lora),
            Ok(false) => {}
            Err(e) => r
                .errors
                .push(format!("putting LoRA {lora} back in the queue: {e}")),
        }
    }

    /// A provider-side failure of `backend`, for its circuit breaker.
    pub(crate) async fn breaker_failure(
        &self,
        backend: &str,
        key: String,
        reason: String,
        now: DateTime<Utc>,
        r: &mut TickReport,
    ) {
        if let Err(e) = self
            .router
            .record(
                &*self.repo,
                backend,
                BreakerEvent::Failure { key, reason },
                now,
                &mut r.breaker_transitions,
            )
            .await
        {
            r.errors.push(format!(
                "recording a failure of {backend} for its breaker: {e}"
            ));
        }
    }

    /// Launches attempt `attempt` of a job this engine has claimed on the chosen backend.
    async fn launch(
        &self,
        lora: LoraId,
        attempt: u32,
        failures: u32,
        choice: Choice,
        now: DateTime<Utc>,
    ) -> TickReport {
        let mut r = TickReport::default();
        let backend = &self.router.backends[choice.index];
        let token = match &self.tokens {
            Some(t) => match t.issue(lora, attempt, &self.settings.worker_id) {
                Ok(t) => t,
                Err(e) => {
                    // The lease stays with us; if this keeps failing the reaper requeues the job.
                    r.errors.push(format!("worker token for LoRA {lora}: {e}"));
                    return r;
                }
            },
            None => String::new(),
        };
        let name = instance_name(&self.settings.instance_prefix, lora, attempt);
        let launch = Launch {
            lora_id: lora,
            attempt,
            instance_name: name.clone(),
            server: self.settings.server_url.clone(),
            token,
            retry: failures > 0,
            task: crate::backend::Task::Train,
        };
        match self
            .with_timeout(
                &format!("launching on {}", backend.name()),
                backend.launch(&launch),
            )
            .await
        {
            Ok(launched) => {
                self.router.forget(lora);
                if choice.probe {
                    let event = BreakerEvent::Launched {
                        holder: self.settings.worker_id.clone(),
                    };
                    if let Err(e) = self
                        .router
                        .record(
                            &*self.repo,
                            backend.name(),
                            event,
                            now,
                            &mut r.breaker_transitions,
                        )
                        .await
                    {
                        r.errors.push(format!(
                            "closing the breaker of {} after its probe: {e}",
                            backend.name()
                        ));
                    }
                }
                let run = NewRun {
                    id: RunId::new(),
                    lora_id: lora,
                    attempt,
                    backend: backend.name().to_owned(),
                    route_reason: Some(choice.reason.clone()),
                    engine: self.settings.worker_id.clone(),
                    instance_name: name.clone(),
                    provider_id: launched.provider_id.clone(),
                    gpu_type: launched.gpu_type,
                    price_per_hour: launched.price_per_hour,
                    created_at: now,
                    started_at: self.clock.now(),
                };
                match self.repo.insert_run(&run).await {
                    Ok(_) => {
                        tracing::info!(lora = %lora, attempt, backend = backend.name(), instance = %launched.provider_id,
                            route = %choice.reason, "run started");
                        r.started.push(lora);
                    }
                    Err(e) => {
                        // Without a record nobody would watch the instance: end it now. (The job moved
                        // on, or the database failed; the lease then expires and the job is reaped.)
                        r.errors.push(format!(
                            "recording run {attempt} of LoRA {lora}: {e}; ending its instance"
                        ));
                        let instance = Instance {
                            provider_id: launched.provider_id,
                            instance_name: name,
                            lora_id: lora,
                            attempt,
                        };
                        if let Err(e) = self
                            .with_timeout(
                                "ending an unrecorded instance",
                                backend.terminate(&instance, Ending::Stop),
                            )
                            .await
                        {
                            tracing::error!(lora = %lora, instance = %instance.provider_id, error = %e,
                                "operator alert: an unrecorded instance could not be ended; the orphan sweep must find it");
                        }
                    }
                }
            }
            Err(e) => {
                // Every failed start is the backend's, never the job's (its input was checked
                // before it was queued): it counts toward the breaker, so a backend that cannot
                // start runs (down, full, or misconfigured: bad credentials, a missing image)
                // is soon skipped. A request to slow down (429) is not a failure: the backend
                // is only left alone for as long as it asked.
                if e.is_provider_failure() {
                    let key = format!(
                        "launch:{lora}:{attempt}:{failures}:{}",
                        now.timestamp_micros()
                    );
                    self.breaker_failure(backend.name(), key, e.to_string(), now, &mut r)
                        .await;
                }
                if !e.is_retryable() {
                    tracing::error!(backend = backend.name(), error = %e,
                        "operator alert: a backend refused a launch for good; check its settings");
                }
                self.router.failed_on(lora, backend.name());
                if e.is_capacity() || e.is_throttled() {
                    self.wait_for_capacity(lora, backend.name(), &e, now, &mut r)
                        .await
                } else {
                    self.start_failed(lora, failures, &e, now, &mut r).await
                }
            }
        }
        r
    }

    /// No backend had a GPU, or it asked us to slow down: the job goes back to the queue (no
    /// attempt used) with a message saying why, and the backend is left alone for a while (as
    /// long as it asked, within [`THROTTLE_WAIT`]; else [`CAPACITY_COOL_DOWN`]). Claimed again,
    /// the job goes to another backend meanwhile if one can take it.
    async fn wait_for_capacity(
        &self,
        lora: LoraId,
        backend: &str,
        e: &BackendError,
        now: DateTime<Utc>,
        r: &mut TickReport,
    ) {
        let (wait, cooling, waiting) = match e {
            BackendError::Throttled { retry_after, .. } => (
                retry_after
                    .unwrap_or(THROTTLE_WAIT.0)
                    .clamp(THROTTLE_WAIT.0, THROTTLE_WAIT.1),
                "asked us to slow down (429)",
                format!("waiting: {backend} asked us to slow down"),
            ),
            _ => (
                CAPACITY_COOL_DOWN,
                "no capacity",
                format!("waiting for a GPU: {backend} has none available"),
            ),
        };
        let until = now + chrono_duration(wait);
        self.router.cool_down_because(backend, until, cooling);
        let message = format!(
            "{waiting} ({e}); trying again from {}",
            until.format("%H:%M:%S UTC")
        );
        match self
            .repo
            .unclaim(lora, &self.settings.worker_id, &message, now)
            .await
        {
            Ok(true) => {
                self.router.forget(lora);
                tracing::info!(lora = %lora, backend, error = %e, "no capacity or throttled; the job waits in the queue");
                r.waiting.push(lora);
            }
            Ok(false) => {}
            Err(e) => r
                .errors
                .push(format!("putting LoRA {lora} back in the queue: {e}")),
        }
    }

    async fn start_failed(
        &self,
        id: LoraId,
        failures: u32,
        e: &BackendError,
        now: DateTime<Utc>,
        r: &mut TickReport,
    ) {
        let delay = usize::try_from(failures)
            .ok()
            .and_then(|i| self.settings.start_retry_delays.get(i));
        // Another backend can take it: try there at once (fallback) instead of waiting on the
        // one that failed, even when that one can never start it as configured.
        let room = self.room().await.unwrap_or_default();
        let fallback = self.router.has_fallback(id, &room, now);
        match delay {
            Some(delay) if e.is_retryable() || fallback => {
                let next = if fallback {
                    now
                } else {
                    now + chrono_duration(*delay)
                };
                // The lease must outlast the wait.
                let lease = next + chrono_duration(self.settings.lease);
                let recorded = async {
                    self.repo
                        .record_start_failure(id, &e.to_string(), next)
                        .await?;
                    self.repo
                        .heartbeat(id, &self.settings.worker_id, lease, now)
                        .await
                }
                .await;
                match recorded {
                    Ok(_) => {
                        tracing::info!(lora = %id, error = %e, retry_at = %next, "start failed; will retry");
                        r.start_retries.push(id);
                    }
                    Err(db) => r
                        .errors
                        .push(format!("recording a failed start of LoRA {id}: {db}")),
                }
            }
            _ => {
                let reason = if failures == 0 {
                    format!("training could not start: {e}")
                } else {
                    format!(
                        "training could not start after {} attempts: {e}",
                        failures + 1
                    )
                };
                self.router.forget(id);
                if self
                    .apply(id, StatusEvent::Fail, Some(reason), now, r)
                    .await
                {
                    r.failed.push(id);
                }
            }
        }
    }
}
