//! The runs part of a tick: every open run is observed on its backend, its outcome settled on
//! its job once (after-training, requeue counted or not, fail), and its instance ended and paid
//! for. `engine.rs` holds the loop and the other steps; `dispatch.rs` the launches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;

use loraforge_db::{OpenRun, Settle};
use loraforge_domain::outcome::{self, Disposition, Origin};
use loraforge_domain::{LoraId, MicroUsd, RunId, TrainingRun, TrainingStatus};

use crate::Result;
use crate::backend::{Ending, Instance, Observed, Scope, Termination, TrainingBackend};
use crate::settings::{chrono_duration, human_duration};

use crate::engine::{Engine, TickReport};

impl Engine {
    /// The current run of every job that has one, by LoRA.
    pub(crate) async fn current_runs(&self) -> Result<HashMap<LoraId, TrainingRun>> {
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

    pub(crate) async fn advance_runs(
        &self,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<()> {
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
    pub(crate) async fn observe(
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
    pub(crate) async fn advance(
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
    pub(crate) async fn settle(
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
    pub(crate) async fn settlement(
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
    pub(crate) fn restart_spared(
        &self,
        run: &TrainingRun,
        counted: bool,
        message: String,
    ) -> (bool, String) {
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
    pub(crate) fn retry_or_fail(&self, o: &OpenRun, counted: bool, message: String) -> Settle {
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
    pub(crate) async fn end_instance(
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
}

pub(crate) fn instance_of(run: &TrainingRun) -> Instance {
    Instance {
        provider_id: run.provider_id.clone(),
        instance_name: run.instance_name.clone(),
        lora_id: run.lora_id,
        attempt: run.attempt,
    }
}

/// What a run cost: its billed time (the provider's, else from creation to the confirmed end)
/// at its price per hour.
pub(crate) fn cost_of(
    run: &TrainingRun,
    billed_millis: Option<u64>,
    now: DateTime<Utc>,
) -> MicroUsd {
    let Some(price) = run.price_per_hour else {
        return MicroUsd::ZERO;
    };
    let millis = billed_millis
        .unwrap_or_else(|| u64::try_from((now - run.created_at).num_milliseconds()).unwrap_or(0));
    price.per_hour_for_millis(millis)
}
