//! Sample batches as worker attempts (the library's "try it"; `domain::samples`). One step of
//! the tick, after training's dispatch:
//!
//! 1. every batch instance this engine looks after (its own on a `Scope::Engine` backend, any
//!    on a shared one) is observed: an instance that ended while its batch still renders that
//!    attempt — the worker reported nothing — fails the attempt with the backend's account
//!    (retried with the domain's backoff, 3 attempts); an attempt rendering longer than
//!    [`SAMPLE_TIMEOUT`] is failed `timed_out`; an instance whose batch moved on (completed,
//!    failed, requeued) is ended until the backend confirms it gone, then recorded gone, so no
//!    instance outlives its attempt;
//! 2. due batches are claimed (compare-and-set, one replica wins) and launched on the first
//!    backend that runs sample work and has room after training (the router's room, cool-down,
//!    gates and breakers), with a per-attempt sample token; no room → the claim is undone
//!    without using an attempt.

use std::time::Duration;

use chrono::{DateTime, Utc};

use loraforge_db::{SampleBatch, SampleInstance};
use loraforge_domain::SampleBatchId;
use loraforge_domain::samples::{SampleStatus, failure_is_retryable};

use crate::Result;
use crate::backend::{Ending, Instance, Launch, Observed, Scope, Task, TrainingBackend};
use crate::engine::{CAPACITY_COOL_DOWN, Engine, TickReport};
use crate::settings::chrono_duration;

/// Longest a sample attempt may render before it is failed and its instance stopped.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Batches launched per tick at most.
const LAUNCHES_PER_TICK: u32 = 8;

/// `loraforge-sample-<batch>-<attempt>`: a sample attempt's instance name (never a training
/// run's `loraforge-<lora>-<attempt>` prefix of a LoRA id, since batch ids are not LoRA ids).
pub fn sample_instance_name(prefix: &str, batch: SampleBatchId, attempt: u32) -> String {
    format!("{prefix}sample-{batch}-{attempt}")
}

impl Engine {
    pub(crate) async fn advance_samples(
        &self,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<()> {
        if !self.router.backends.iter().any(|b| b.runs_samples()) {
            return Ok(());
        }
        let open = self.repo.open_sample_instances().await?;
        for b in &open {
            if let Err(e) = self.watch_sample(b, now, report).await {
                report.errors.push(format!("sample batch {}: {e}", b.id));
            }
        }
        self.launch_samples(&open, now, report).await
    }

    fn sample_backend(
        &self,
        inst: &SampleInstance,
    ) -> Option<&std::sync::Arc<dyn TrainingBackend>> {
        let backend = self.backend(&inst.backend)?;
        (backend.scope() == Scope::Shared || inst.engine == self.settings.worker_id)
            .then_some(backend)
    }

    async fn watch_sample(
        &self,
        b: &SampleBatch,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> std::result::Result<(), String> {
        let Some(inst) = &b.instance else {
            return Ok(());
        };
        let Some(backend) = self.sample_backend(inst) else {
            return Ok(());
        };
        let instance = Instance {
            provider_id: inst.provider_id.clone(),
            instance_name: inst.instance_name.clone(),
            lora_id: b.lora_id,
            attempt: b.attempts,
        };
        let observed = self
            .with_timeout(
                &format!("observing on {}", backend.name()),
                backend.observe(std::slice::from_ref(&instance)),
            )
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .unwrap_or(Observed::Running);
        let rendering = b.status == SampleStatus::Rendering;
        let (ending, gone_now) = match observed {
            Observed::Running if rendering => {
                if now - b.updated_at <= chrono_duration(SAMPLE_TIMEOUT) {
                    return Ok(());
                }
                self.fail_sample(b, "timed_out", "the attempt rendered too long", report, now)
                    .await?;
                (Ending::Stop, false)
            }
            Observed::Running => (Ending::Finished, false),
            Observed::Ended {
                outcome,
                reason,
                gone,
            } => {
                if rendering {
                    // The worker said nothing: the backend's account is the outcome.
                    let why = reason.unwrap_or_else(|| "the worker ended without a report".into());
                    self.fail_sample(b, outcome, &why, report, now).await?;
                }
                (Ending::Stop, gone)
            }
        };
        let gone = gone_now
            || self
                .with_timeout(
                    &format!("ending on {}", backend.name()),
                    backend.terminate(&instance, ending),
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
                        // Cannot happen while we hold the claim; never leave it unwatched.
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
