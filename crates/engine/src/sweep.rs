//! The orphan sweep (PRD 4, scenario 4): instances of this service that no live run or sample
//! batch owns are terminated, and checkpoints left by jobs past training are deleted. Runs at
//! start and every `sweep_interval`, one replica at a time; it sleeps between tries, so it is not
//! part of `tick`. Whose an instance is comes from its name (`domain::run::parse_instance_name`:
//! a training attempt's or a sample attempt's).

use std::time::Duration;

use loraforge_db::{OpenRun, SampleBatch};
use loraforge_domain::run::{InstanceOwner, parse_instance_name};
use loraforge_domain::samples::SampleStatus;
use loraforge_domain::{LoraId, TrainingStatus};

use crate::backend::{Ending, Instance};
use crate::engine::Engine;
use crate::settings::chrono_duration;

/// What one orphan sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Whether this replica held the sweep's lease (one replica sweeps at a time).
    pub swept: bool,
    /// Instances found with this service's prefix.
    pub seen: usize,
    /// Orphans terminated, by provider id.
    pub terminated: Vec<String>,
    /// Orphans that would not end after 3 tries (an operator alert was recorded for each).
    pub alerts: Vec<String>,
    /// Jobs past training whose leftover checkpoints were deleted (a deletion that failed when
    /// the job ended is done here).
    pub checkpoints_deleted: Vec<LoraId>,
    pub errors: Vec<String>,
}

/// Pauses between the tries to end an orphan.
const ORPHAN_RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(4)];

/// How long one replica holds the sweep.
const SWEEP_LEASE: Duration = Duration::from_secs(15 * 60);

impl Engine {
    // --- the orphan sweep (PRD 4, scenario 4) -------------------------------------------------

    /// Lists every backend's instances named with this service's prefix and ends those no live
    /// run or sample batch owns: 3 tries with a pause between them, then an operator alert. A
    /// training instance is owned when a run not confirmed gone has its provider id, or while its
    /// job's current attempt is being launched (its name's attempt, the job training and leased);
    /// a sample instance when a batch's instance not confirmed gone has its provider id, or while
    /// its batch's attempt is being launched (rendering at its name's attempt, no instance
    /// recorded yet). One replica sweeps at a time (a lease in the database). Sleeps between
    /// tries: not part of `tick`.
    pub async fn sweep_orphans(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let now = self.clock.now();
        match self
            .repo
            .try_lease(
                "orphan_sweep",
                &self.settings.worker_id,
                now + chrono_duration(SWEEP_LEASE),
                now,
            )
            .await
        {
            Ok(true) => report.swept = true,
            Ok(false) => return report,
            Err(e) => {
                report.errors.push(format!("taking the sweep's lease: {e}"));
                return report;
            }
        }
        let open = match self.repo.open_runs().await {
            Ok(o) => o,
            Err(e) => {
                report.errors.push(format!("reading the runs: {e}"));
                return report;
            }
        };
        let samples = match self.repo.watched_sample_batches().await {
            Ok(s) => s,
            Err(e) => {
                report
                    .errors
                    .push(format!("reading the sample batches: {e}"));
                return report;
            }
        };
        let prefix = &self.settings.instance_prefix;
        for backend in &self.router.backends {
            let listed = match self
                .with_timeout("listing instances", backend.list_instances(prefix))
                .await
            {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    report
                        .errors
                        .push(format!("listing the instances of {}: {e}", backend.name()));
                    continue;
                }
            };
            report.seen += listed.len();
            for (provider_id, name) in listed {
                let Some(owner) = parse_instance_name(prefix, &name) else {
                    // The prefix matched but the name is not one of ours: leave it to people.
                    continue;
                };
                let owned = match owner {
                    InstanceOwner::Run { lora, attempt } => {
                        self.owns_run(&open, backend.name(), &provider_id, lora, attempt)
                            .await
                    }
                    InstanceOwner::Sample { batch, attempt } => {
                        self.owns_sample(&samples, backend.name(), &provider_id, batch, attempt)
                            .await
                    }
                };
                if owned {
                    continue;
                }
                let (lora, attempt) = match owner {
                    InstanceOwner::Run { lora, attempt } => (lora, attempt),
                    // The batch's LoRA, for the backend's logs (none when the batch is unknown).
                    InstanceOwner::Sample { batch, attempt } => (
                        match self.repo.sample_batch(batch).await {
                            Ok(Some(b)) => b.lora_id,
                            _ => LoraId(uuid::Uuid::nil()),
                        },
                        attempt,
                    ),
                };
                tracing::warn!(backend = backend.name(), instance = %provider_id, %name, "orphaned instance; terminating it");
                let instance = Instance {
                    provider_id: provider_id.clone(),
                    instance_name: name.clone(),
                    lora_id: lora,
                    attempt,
                };
                let mut last = None;
                for (i, pause) in std::iter::once(Duration::ZERO)
                    .chain(ORPHAN_RETRY_DELAYS)
                    .enumerate()
                {
                    if i > 0 {
                        tokio::time::sleep(pause).await;
                    }
                    match self
                        .with_timeout(
                            "ending an orphan",
                            backend.terminate(&instance, Ending::Stop),
                        )
                        .await
                    {
                        Ok(t) if t.gone => {
                            last = None;
                            break;
                        }
                        Ok(_) => last = Some("it is still there after terminate".to_owned()),
                        Err(e) => last = Some(e.to_string()),
                    }
                }
                match last {
                    None => report.terminated.push(provider_id),
                    Some(why) => {
                        let message = format!(
                            "instance {provider_id} ({name}) on {} belongs to no live run and could not be terminated \
                             after 3 tries ({why}); it may still cost money: end it by hand",
                            backend.name()
                        );
                        tracing::error!(alert = "orphan_instance", %message);
                        if let Err(e) = self
                            .repo
                            .record_alert(
                                "orphan_instance",
                                &provider_id,
                                &message,
                                self.clock.now(),
                            )
                            .await
                        {
                            report.errors.push(format!("recording an alert: {e}"));
                        }
                        report.alerts.push(provider_id);
                    }
                }
            }
        }
        self.sweep_checkpoints(&mut report).await;
        report
    }

    /// Deletes the stored checkpoints of jobs past training (normally deleted when their last
    /// instance ends; this catches a deletion that failed then).
    async fn sweep_checkpoints(&self, report: &mut SweepReport) {
        let loras = match self.after.loras_with_checkpoints().await {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(e);
                return;
            }
        };
        for id in loras {
            let lora = match self.repo.get_lora(id).await {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    report.errors.push(format!("reading LoRA {id}: {e}"));
                    continue;
                }
            };
            if matches!(
                lora.status,
                TrainingStatus::Pending | TrainingStatus::Queued | TrainingStatus::Training
            ) {
                continue;
            }
            match self.after.forget_checkpoints(&lora).await {
                Ok(_) => report.checkpoints_deleted.push(id),
                Err(e) => report
                    .errors
                    .push(format!("deleting the checkpoints of LoRA {id}: {e}")),
            }
        }
    }

    /// Whether a listed training instance belongs to a live run (or to a launch in progress).
    async fn owns_run(
        &self,
        open: &[OpenRun],
        backend: &str,
        provider_id: &str,
        lora: LoraId,
        attempt: u32,
    ) -> bool {
        if open
            .iter()
            .any(|o| o.run.backend == backend && o.run.provider_id == provider_id)
        {
            return true;
        }
        // A launch whose run is not recorded yet: the job is training, leased, at this attempt.
        match (
            self.repo.job_claim(lora).await,
            self.repo.get_lora(lora).await,
        ) {
            (Ok(Some(claim)), Ok(Some(l))) => {
                l.status == TrainingStatus::Training
                    && claim.attempt == attempt
                    && claim
                        .lease_until
                        .is_some_and(|until| until > self.clock.now())
                    && !open
                        .iter()
                        .any(|o| o.run.lora_id == lora && o.run.attempt == attempt)
            }
            // When in doubt, keep it: the next sweep looks again.
            (Err(_), _) | (_, Err(_)) => true,
            _ => false,
        }
    }

    /// Whether a listed sample instance belongs to a batch: its recorded instance (not confirmed
    /// gone), or a launch in progress (the batch rendering this attempt, no instance recorded
    /// yet; the engine gives such a claim up after its lease, `engine::samples`).
    async fn owns_sample(
        &self,
        watched: &[SampleBatch],
        backend: &str,
        provider_id: &str,
        batch: loraforge_domain::SampleBatchId,
        attempt: u32,
    ) -> bool {
        let recorded = |b: &SampleBatch| {
            b.instance
                .as_ref()
                .is_some_and(|i| i.backend == backend && i.provider_id == provider_id)
        };
        if watched.iter().any(recorded) {
            return true;
        }
        match self.repo.sample_batch(batch).await {
            Ok(Some(b)) => {
                b.status == SampleStatus::Rendering && b.attempts == attempt && b.instance.is_none()
            }
            Ok(None) => false,
            // When in doubt, keep it: the next sweep looks again.
            Err(_) => true,
        }
    }
}
