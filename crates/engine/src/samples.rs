//! Sample batches as worker attempts (the library's "try it"; `domain::samples`). One step of
//! the tick, after training's dispatch:
//!
//! 1. every batch instance this engine looks after (its own on a `Scope::Engine` backend, any
//!    on a shared one) is observed, one call per backend at its `observe_every` (as runs are):
//!    an instance that ended while its batch still renders that attempt — the worker reported
//!    nothing — fails the attempt with the backend's account (retried with the domain's
//!    backoff, 3 attempts); an instance whose batch moved on (completed, failed, requeued) is
//!    ended until the backend confirms it gone, then recorded gone, so no instance outlives its
//!    attempt;
//! 2. every rendering attempt (on any replica, like the reaper) whose worker has not been heard
//!    of within the engine's lease (`domain::samples::worker_silent`: its fetch and heartbeats)
//!    is failed `lease_expired`, and one rendering longer than [`SAMPLE_TIMEOUT`] `timed_out`;
//!    its instance is stopped;
//! 3. due batches are claimed (compare-and-set, one replica wins) and launched on the first
//!    backend that runs sample work and has room after training (the router's room, cool-down,
//!    gates and breakers), with a per-attempt sample token and the name
//!    `domain::run::sample_instance_name` (which the orphan sweep reads back); no room → the
//!    claim is undone without using an attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;

use loraforge_db::{SampleBatch, SampleInstance};
use loraforge_domain::SampleBatchId;
use loraforge_domain::run::sample_instance_name;
use loraforge_domain::samples::{SampleStatus, failure_is_retryable, worker_silent};

use crate::Result;
use crate::backend::{Ending, Instance, Launch, Observed, Scope, Task, TrainingBackend};
use crate::engine::{CAPACITY_COOL_DOWN, Engine, TickReport};
use crate::settings::{chrono_duration, human_duration};

/// Longest a sample attempt may render before it is failed and its instance stopped.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Batches launched per tick at most.
const LAUNCHES_PER_TICK: u32 = 8;

/// A watched batch and its instance as its backend is told of it.
type Watched<'a> = (&'a SampleBatch, Instance);

impl Engine {
    pub(crate) async fn advance_samples(
        &self,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<()> {
        if !self.router.backends.iter().any(|b| b.runs_samples()) {
            return Ok(());
        }
        let watched = self.repo.watched_sample_batches().await?;
        let observed = self.observe_samples(now, &watched, report).await;
        for b in &watched {
            if let Err(e) = self.watch_sample(b, observed.get(&b.id), now, report).await {
                report.errors.push(format!("sample batch {}: {e}", b.id));
            }
        }
        self.launch_samples(&watched, now, report).await
    }

    fn sample_backend(
        &self,
        inst: &SampleInstance,
    ) -> Option<&std::sync::Arc<dyn TrainingBackend>> {
        let backend = self.backend(&inst.backend)?;
        (backend.scope() == Scope::Shared || inst.engine == self.settings.worker_id)
            .then_some(backend)
    }

    /// Asks each backend about the sample instances this engine looks after: one call per
    /// backend, concurrently, once its `observe_every` has passed since the last (kept apart from
    /// the runs' own pace, so neither starves the other).
    async fn observe_samples(
        &self,
        now: DateTime<Utc>,
        watched: &[SampleBatch],
        report: &mut TickReport,
    ) -> HashMap<SampleBatchId, Observed> {
        let mut by_backend: HashMap<&str, Vec<Watched<'_>>> = HashMap::new();
        for b in watched {
            let Some(inst) = &b.instance else { continue };
            if self.sample_backend(inst).is_none() {
                continue;
            }
            by_backend
                .entry(inst.backend.as_str())
                .or_default()
                .push((b, sample_instance(b, inst)));
        }
        let due: Vec<(&Arc<dyn TrainingBackend>, Vec<Watched<'_>>)> = {
            let mut last = self.observed_at.lock().unwrap_or_else(|e| e.into_inner());
            by_backend
                .into_iter()
                .filter_map(|(name, batches)| {
                    let backend = self.backend(name)?;
                    let key = format!("{name} (samples)");
                    let every = chrono_duration(backend.observe_every());
                    if last.get(&key).is_some_and(|at| now < *at + every) {
                        return None;
                    }
                    last.insert(key, now);
                    Some((backend, batches))
                })
                .collect()
        };
        let calls: Vec<BoxFuture<'_, _>> = due
            .into_iter()
            .map(|(backend, batches)| {
                async move {
                    let instances: Vec<Instance> = batches.iter().map(|(_, i)| i.clone()).collect();
                    let what = format!("observing the sample instances on {}", backend.name());
                    let seen = self.with_timeout(&what, backend.observe(&instances)).await;
                    (backend.name().to_owned(), batches, seen)
                }
                .boxed()
            })
            .collect();
        let mut observed = HashMap::new();
        for (name, batches, seen) in futures::future::join_all(calls).await {
            match seen {
                Ok(states) if states.len() == batches.len() => {
                    observed.extend(batches.iter().map(|(b, _)| b.id).zip(states));
                }
                Ok(states) => report.errors.push(format!(
                    "backend {name} answered for {} of {} sample instances; ignored",
                    states.len(),
                    batches.len()
                )),
                Err(e) => report
                    .errors
                    .push(format!("observing the sample instances on {name}: {e}")),
            }
        }
        observed
    }

    /// Why a rendering attempt is over though its worker said nothing: not heard of within the
    /// lease, or rendering too long.
    fn sample_overdue(
        &self,
        b: &SampleBatch,
        now: DateTime<Utc>,
    ) -> Option<(&'static str, String)> {
        if worker_silent(
            b.updated_at,
            b.heard_at,
            b.instance.is_some(),
            now,
            self.settings.lease,
        ) {
            let why = match b.heard_at {
                Some(at) => format!(
                    "the worker was last heard of at {} (more than {} ago)",
                    at.format("%Y-%m-%d %H:%M:%S UTC"),
                    human_duration(self.settings.lease)
                ),
                None => format!(
                    "the attempt was claimed at {} but its launch was never recorded (the engine that \
                     launched it stopped?)",
                    b.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
                ),
            };
            return Some(("lease_expired", why));
        }
        (b.instance.is_some() && now - b.updated_at > chrono_duration(SAMPLE_TIMEOUT)).then(|| {
            (
                "timed_out",
                format!(
                    "the attempt rendered longer than {}",
                    human_duration(SAMPLE_TIMEOUT)
                ),
            )
        })
    }

    async fn watch_sample(
        &self,
        b: &SampleBatch,
        observed: Option<&Observed>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> std::result::Result<(), String> {
        let mut rendering = b.status == SampleStatus::Rendering;
        let mut stop = false;
        if rendering && let Some((code, why)) = self.sample_overdue(b, now) {
            self.fail_sample(b, code, &why, report, now).await?;
            rendering = false;
            stop = true;
        }
        let Some(inst) = &b.instance else {
            return Ok(());
        };
        let Some(backend) = self.sample_backend(inst) else {
            return Ok(());
        };
        let (ending, gone_now) = match observed {
            Some(Observed::Ended {
                outcome,
                reason,
                gone,
            }) => {
                if rendering {
                    // The worker said nothing: the backend's account is the outcome.
                    let why = reason
                        .clone()
                        .unwrap_or_else(|| "the worker ended without a report".into());
                    self.fail_sample(b, outcome, &why, report, now).await?;
                }
                (Ending::Stop, *gone)
            }
            Some(Observed::Running) if rendering => return Ok(()),
            Some(Observed::Running) if !stop => (Ending::Finished, false),
            Some(Observed::Running) => (Ending::Stop, false),
            // Not looked at this tick: only an attempt failed just now is stopped at once.
            None if stop => (Ending::Stop, false),
            None => return Ok(()),
        };
        let gone = gone_now
            || self
                .with_timeout(
                    &format!("ending on {}", backend.name()),
                    backend.terminate(&sample_instance(b, inst), ending),
                )
                .await
                .map_err(|e| e.to_string())?
                .gone;
        if gone {
            self.repo
                .record_sample_instance_gone(b.id, &inst.provider_id, now)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(batch = %b.id, attempt = b.attempts, backend = backend.name(), "sample instance gone");
            report.samples_gone.push(b.id);
        }
        Ok(())
    }

    async fn fail_sample(
        &self,
        b: &SampleBatch,
        code: &str,
        reason: &str,
        report: &mut TickReport,
        now: DateTime<Utc>,
    ) -> std::result::Result<(), String> {
        let to = self
            .repo
            .fail_sample_attempt(
                b.id,
                b.attempts,
                &format!("{code}: {reason}"),
                failure_is_retryable(code),
                now,
            )
            .await
            .map_err(|e| e.to_string())?;
        if to.is_some() {
            tracing::info!(batch = %b.id, attempt = b.attempts, code, reason, next = ?to, "sample attempt failed");
            report.samples_failed.push(b.id);
        }
        Ok(())
    }

    async fn launch_samples(
        &self,
        open: &[SampleBatch],
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<()> {
        let Some(tokens) = self.tokens.clone() else {
            return Ok(());
        };
        let mut room = self.room().await?;
        // Sample instances take room too.
        for (i, backend) in self.router.backends.iter().enumerate() {
            let used = open
                .iter()
                .filter_map(|b| b.instance.as_ref())
                .filter(|inst| inst.backend == backend.name())
                .filter(|inst| {
                    backend.scope() == Scope::Shared || inst.engine == self.settings.worker_id
                })
                .count();
            room[i] = room[i].saturating_sub(used);
        }
        for b in self.repo.due_sample_batches(now, LAUNCHES_PER_TICK).await? {
            let Some(index) = self.router.choose_for_samples(&room, now) else {
                break;
            };
            if !self.repo.claim_sample_batch(b.id, b.attempts, now).await? {
                continue;
            }
            let attempt = b.attempts + 1;
            let backend = self.router.backends[index].clone();
            let token = match tokens.issue_sample(b.id, attempt) {
                Ok(t) => t,
                Err(e) => {
                    self.repo
                        .unclaim_sample_batch(
                            b.id,
                            attempt,
                            now + chrono_duration(CAPACITY_COOL_DOWN),
                            now,
                        )
                        .await?;
                    report
                        .errors
                        .push(format!("sample token for batch {}: {e}", b.id));
                    continue;
                }
            };
            let name = sample_instance_name(&self.settings.instance_prefix, b.id, attempt);
            let launch = Launch {
                lora_id: b.lora_id,
                attempt,
                instance_name: name.clone(),
                server: self.settings.server_url.clone(),
                token,
                retry: false,
                task: Task::Sample { batch: b.id },
            };
            match self
                .with_timeout(
                    &format!("launching samples on {}", backend.name()),
                    backend.launch(&launch),
                )
                .await
            {
                Ok(launched) => {
                    room[index] = room[index].saturating_sub(1);
                    let inst = SampleInstance {
                        backend: backend.name().to_owned(),
                        engine: self.settings.worker_id.clone(),
                        provider_id: launched.provider_id.clone(),
                        instance_name: name,
                    };
                    if !self
                        .repo
                        .record_sample_instance(b.id, attempt, &inst, now)
                        .await?
                    {
                        // The claim was given up meanwhile (the launch outlasted the lease): never leave
                        // the instance unwatched.
                        let _ = backend
                            .terminate(
                                &Instance {
                                    provider_id: launched.provider_id,
                                    instance_name: inst.instance_name,
                                    lora_id: b.lora_id,
                                    attempt,
                                },
                                Ending::Stop,
                            )
                            .await;
                        continue;
                    }
                    tracing::info!(batch = %b.id, lora = %b.lora_id, attempt, backend = backend.name(),
                        instance = %inst.provider_id, "sample attempt started");
                    report.samples_started.push(b.id);
                }
                Err(e) if e.is_capacity() => {
                    self.router
                        .cool_down(backend.name(), now + chrono_duration(CAPACITY_COOL_DOWN));
                    self.repo
                        .unclaim_sample_batch(
                            b.id,
                            attempt,
                            now + chrono_duration(CAPACITY_COOL_DOWN),
                            now,
                        )
                        .await?;
                }
                Err(e) => {
                    let to = self
                        .repo
                        .fail_sample_attempt(
                            b.id,
                            attempt,
                            &format!("start_failed: {e}"),
                            e.is_retryable(),
                            now,
                        )
                        .await?;
                    tracing::warn!(batch = %b.id, attempt, backend = backend.name(), error = %e, next = ?to, "sample launch failed");
                    report.samples_failed.push(b.id);
                }
            }
        }
        Ok(())
    }
}

/// A batch's instance as its backend is told of it (keyed by provider id; the LoRA for logs).
fn sample_instance(b: &SampleBatch, inst: &SampleInstance) -> Instance {
    Instance {
        provider_id: inst.provider_id.clone(),
        instance_name: inst.instance_name.clone(),
        lora_id: b.lora_id,
        attempt: b.attempts,
    }
}
