//! The `aitoolkit` backend: one ai-toolkit job per training attempt, on a host or pod running
//! ai-toolkit's web UI. ai-toolkit runs its own trainer, not our worker, so this backend plays
//! the worker's part for the attempt over the worker protocol (`loraforge_worker::remote`) with
//! the attempt's token:
//!
//! - Launch: GET the worker job → download its images and captions → create a dataset named
//!   after the instance → upload them → create the job (config from [`crate::config`]) → start
//!   it → start its GPU queue (a queued job never runs on a stopped queue). `start` answers the
//!   row as it was before, so nothing is read from it. A launch repeated after an unknown
//!   result (`Launch::retry`), or a create answered 409, takes our own job by its name.
//! - Observe: one `GET /api/jobs?id=` per run. Queued or running: the progress (`step` of
//!   `total_steps`, else the config's steps; `info` as the stage) goes to the control plane,
//!   which keeps the job's lease; a 409 there (the job no longer wants this attempt) stops the
//!   ai-toolkit job. Completed: a task (one per job, never two) downloads the final
//!   `<name>.safetensors` and the samples, converts the kohya file to our diffusers form and
//!   delivers both like a worker's result; the run reads Running until it is done. Error: the
//!   failure is reported with a code read from the log tail (out of memory, diverged) else
//!   `provider_failed`. Stopped by someone else: `provider_failed`.
//! - Terminate: stop the job if active, then delete it and its dataset (both idempotent: 404 is
//!   gone). The engine bills from the run's start at the configured price per hour.
//! - After a restart of `serve` the backend has no token for a running attempt: it issues one
//!   again through the engine's [`WorkerTokens`] for (lora, attempt, worker id).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use loraforge_checks::UnetLayout;
use loraforge_domain::{MicroUsd, outcome};
use loraforge_engine::{
    BackendError, Ending, Instance, Launch, Launched, Observed, Scope, Termination,
    TrainingBackend, WorkerTokens,
};
use loraforge_worker::remote::{RemoteAttempt, RemoteError, RemoteProgress};

use crate::config::{self, sanitize_dataset_name, sanitize_file_name};
use crate::deliver::{self, Delivery, DeliverySlot};
use crate::{AiToolkitClient, AiToolkitError, Job, JobStatus};

/// The outcome of a run ai-toolkit ended in `error` for a reason of its own.
pub const PROVIDER_FAILED: &str = "provider_failed";
/// Jobs read at once during one observe.
const OBSERVE_CONCURRENCY: usize = 4;
/// How much of the log's end is read to name a failure.
const LOG_TAIL_BYTES: usize = 64 * 1024;

/// What a restarted `serve` needs to act for attempts it did not launch.
#[derive(Clone)]
pub struct Reissue {
    /// The control plane's base URL as this backend reaches it.
    pub server: String,
    pub tokens: Arc<dyn WorkerTokens>,
    /// The engine's worker id (tokens name it).
    pub worker_id: String,
}

impl std::fmt::Debug for Reissue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reissue")
            .field("server", &self.server)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct AiToolkitBackendSettings {
    /// The backend's name in the database. Default "aitoolkit".
    pub name: String,
    /// Jobs at once (ai-toolkit runs one job per GPU queue). Default 1.
    pub max_runs: usize,
    /// The GPU queue jobs go to. Default "0".
    pub gpu_ids: String,
    /// What the ai-toolkit host costs per hour; `None` records no cost.
    pub price_per_hour: Option<MicroUsd>,
    /// How often the engine polls. Default 10 s.
    pub observe_every: Duration,
    /// Scratch space for images going up and files coming down (a folder per job, removed after).
    pub work_dir: PathBuf,
    /// The largest final LoRA file accepted. Default 2 GiB.
    pub max_model_bytes: u64,
    /// The largest sample image accepted. Default 32 MiB.
    pub max_sample_bytes: u64,
    /// Files per upload request. Default 16.
    pub upload_batch: usize,
    /// The base model's UNet layout, for naming the converted modules. Default SDXL.
    pub unet: UnetLayout,
    pub reissue: Option<Reissue>,
}

impl AiToolkitBackendSettings {
    pub fn new(work_dir: PathBuf) -> Self {
        Self {
            name: "aitoolkit".to_owned(),
            max_runs: 1,
            gpu_ids: "0".to_owned(),
            price_per_hour: None,
            observe_every: Duration::from_secs(10),
            work_dir,
            max_model_bytes: 2 * 1024 * 1024 * 1024,
            max_sample_bytes: 32 * 1024 * 1024,
            upload_batch: 16,
            unet: UnetLayout::SDXL,
            reissue: None,
        }
    }
}

/// What the backend keeps of a run it acts for.
#[derive(Debug)]
struct Tracked {
    remote: RemoteAttempt,
    attempt: u64,
    /// We stopped the job (the control plane no longer wants it).
    stopped_by_us: bool,
    /// The failure was reported already.
    failure_reported: bool,
    delivery: Option<DeliverySlot>,
}

#[derive(Debug)]
pub struct AiToolkitBackend {
    client: AiToolkitClient,
    settings: AiToolkitBackendSettings,
    runs: Mutex<HashMap<String, Tracked>>,
}

pub(crate) fn backend_error(doing: &str, e: AiToolkitError) -> BackendError {
    let text = format!("ai-toolkit, {doing}: {e}");
    if e.is_retryable() {
        BackendError::Transient(text)
    } else {
        BackendError::Permanent(text)
    }
}

pub(crate) fn remote_error(doing: &str, e: RemoteError) -> BackendError {
    let text = format!("{doing}: {e}");
    if e.is_retryable() {
        BackendError::Transient(text)
    } else {
        BackendError::Permanent(text)
    }
}

/// ai-toolkit's `info` as a worker-protocol stage (1–64 of `[a-z_]`).
pub fn stage_of(info: &str) -> Option<String> {
    let mut out = String::new();
    for c in info.trim().to_lowercase().chars() {
        if c.is_ascii_lowercase() {
            out.push(c);
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_');
    let out: String = out.chars().take(64).collect();
    let out = out.trim_end_matches('_').to_owned();
    (!out.is_empty()).then_some(out)
}

/// The outcome a failed job's log tail points at.
pub fn failure_code(log_tail: &str) -> &'static str {
    let text = log_tail.to_lowercase();
    if text.contains("out of memory") || text.contains("outofmemoryerror") {
        "out_of_memory"
    } else if text.contains("nan detected")
        || text.contains("non-finite loss")
        || text.contains("loss is nan")
    {
        "non_finite_loss"
    } else {
        PROVIDER_FAILED
    }
}

impl AiToolkitBackend {
    pub fn new(client: AiToolkitClient, settings: AiToolkitBackendSettings) -> Self {
        Self {
            client,
            settings,
            runs: Mutex::new(HashMap::new()),
        }
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn job_dir(&self, instance_name: &str) -> PathBuf {
        self.settings
            .work_dir
            .join(sanitize_dataset_name(instance_name))
    }

    /// The run's remote attempt: the launch's, else one with a token issued again.
    fn remote(&self, i: &Instance) -> Option<(RemoteAttempt, u64)> {
        if let Some(t) = self.runs().get(&i.provider_id) {
            return Some((t.remote.clone(), t.attempt));
        }
        let reissue = self.settings.reissue.as_ref()?;
        let token = match reissue
            .tokens
            .issue(i.lora_id, i.attempt, &reissue.worker_id)
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(lora = %i.lora_id, error = %e, "cannot issue a worker token for an ai-toolkit run");
                return None;
            }
        };
        let remote = match RemoteAttempt::new(&reissue.server, &i.lora_id.to_string(), &token) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(lora = %i.lora_id, error = %e, "cannot act for an ai-toolkit run");
                return None;
            }
        };
        let attempt = u64::from(i.attempt);
        self.runs().insert(
            i.provider_id.clone(),
            Tracked {
                remote: remote.clone(),
                attempt,
                stopped_by_us: false,
                failure_reported: false,
                delivery: None,
            },
        );
        Some((remote, attempt))
    }

    /// Uploads every file of `dir` (images and their `.txt` captions) in batches.
    async fn upload_dataset(&self, dataset: &str, dir: &Path) -> Result<usize, BackendError> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        let mut sent = 0;
        for chunk in names.chunks(self.settings.upload_batch.max(1)) {
            let mut files = Vec::with_capacity(chunk.len());
            for path in chunk {
                let name = path
                    .file_name()
                    .map(|n| sanitize_file_name(&n.to_string_lossy()))
                    .unwrap_or_default();
                files.push((name, tokio::fs::read(path).await?));
            }
            sent += self
                .client
                .upload(dataset, files)
                .await
                .map_err(|e| backend_error("uploading the dataset", e))?
                .len();
        }
        Ok(sent)
    }

    /// Our job named `name`, if it exists (a launch repeated after an unknown result).
    async fn existing(&self, name: &str) -> Result<Option<Job>, BackendError> {
        self.client
            .job_by_name(name)
            .await
            .map_err(|e| backend_error("listing jobs", e))
    }

    /// Queues the job and makes sure its queue runs.
    async fn start(&self, job: &Job) -> Result<(), BackendError> {
        if !job.status.is_active() {
            // The answer is the row before the update: nothing to read from it.
            self.client
                .start_job(&job.id)
                .await
                .map_err(|e| backend_error("starting the job", e))?;
        }
        let queue = self
            .client
            .start_queue(&self.settings.gpu_ids)
            .await
            .map_err(|e| backend_error("starting the GPU queue", e))?;
        if !queue.is_running {
            return Err(BackendError::Transient(format!(
                "ai-toolkit's queue {} did not start",
                self.settings.gpu_ids
            )));
        }
        Ok(())
    }

    async fn launch_job(
        &self,
        launch: &Launch,
        remote: &RemoteAttempt,
    ) -> Result<Job, BackendError> {
        let name = launch.instance_name.clone();
        if launch.retry
            && let Some(job) = self.existing(&name).await?
        {
            tracing::info!(job = %job.id, %name, "ai-toolkit job of an earlier launch found; using it");
            return Ok(job);
        }
        let job = remote
            .job()
            .await
            .map_err(|e| remote_error("reading the worker job", e))?;
        let dir = self.job_dir(&name);
        let images = dir.join("images");
        let _ = tokio::fs::remove_dir_all(&images).await;
        remote
            .download_images(&job, &images)
            .await
            .map_err(|e| remote_error("downloading the images", e))?;
        let dataset = self
            .client
            .create_dataset(&sanitize_dataset_name(&name))
            .await
            .map_err(|e| backend_error("creating the dataset", e))?;
        let uploaded = self.upload_dataset(&dataset, &images).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        uploaded?;
        let folders = self
            .client
            .toolkit_settings()
            .await
            .map_err(|e| backend_error("reading its settings", e))?;
        let folder = format!(
            "{}/{dataset}",
            folders.datasets_folder.trim_end_matches('/')
        );
        let job_config =
            config::job_config(&job.trainer_spec, &name, &folder, &folders.training_folder)
                .map_err(|e| BackendError::Permanent(e.to_string()))?;
        match self
            .client
            .create_job(&name, &self.settings.gpu_ids, &job_config)
            .await
        {
            Ok(job) => Ok(job),
            Err(e) if e.is_conflict() => self.existing(&name).await?.ok_or_else(|| {
                BackendError::Transient(format!(
                    "ai-toolkit says job {name} exists but does not list it"
                ))
            }),
            Err(e) => Err(backend_error("creating the job", e)),
        }
    }

    async fn observe_one(&self, i: &Instance) -> Result<Observed, BackendError> {
        let Some(job) = self
            .client
            .job(&i.provider_id)
            .await
            .map_err(|e| backend_error("reading a job", e))?
        else {
            return Ok(Observed::Ended {
                outcome: "vanished",
                reason: Some("ai-toolkit no longer knows the job".to_owned()),
                gone: true,
            });
        };
        match &job.status {
            JobStatus::Queued | JobStatus::Running | JobStatus::Stopping => {
                self.relay(i, &job).await;
                Ok(Observed::Running)
            }
            JobStatus::Completed => Ok(self.completed(i, &job)),
            JobStatus::Error => {
                let tail = self.log_tail(&job.id).await;
                let code = failure_code(&tail);
                let reason = job
                    .info
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "ai-toolkit reported an error".to_owned());
                self.report_failure(i, code, &reason).await;
                Ok(Observed::Ended {
                    outcome: code,
                    reason: Some(reason),
                    gone: false,
                })
            }
            JobStatus::Stopped => {
                let ours = self
                    .runs()
                    .get(&i.provider_id)
                    .is_some_and(|t| t.stopped_by_us);
                if ours {
                    return Ok(Observed::Ended {
                        outcome: "stopped",
                        reason: Some("stopped: the job no longer wants this run".to_owned()),
                        gone: false,
                    });
                }
                let reason = "the ai-toolkit job was stopped outside loraforge".to_owned();
                self.report_failure(i, PROVIDER_FAILED, &reason).await;
                Ok(Observed::Ended {
                    outcome: PROVIDER_FAILED,
                    reason: Some(reason),
                    gone: false,
                })
            }
            JobStatus::Other(_) => Ok(Observed::Running),
        }
    }

    /// Relays progress (a heartbeat that keeps the lease); stops the job the control plane no
    /// longer wants.
    async fn relay(&self, i: &Instance, job: &Job) {
        let Some((remote, attempt)) = self.remote(i) else {
            return;
        };
        let stage = if job.status == JobStatus::Queued {
            Some("queued".to_owned())
        } else {
            job.info.as_deref().and_then(stage_of)
        };
        let progress = RemoteProgress {
            stage,
            step: job.step,
            total: job.total(),
            ..RemoteProgress::default()
        };
        match remote.progress(attempt, &progress).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(job = %job.id, lora = %i.lora_id, "the control plane no longer wants this run; stopping the ai-toolkit job");
                if let Some(t) = self.runs().get_mut(&i.provider_id) {
                    t.stopped_by_us = true;
                }
                if let Err(e) = self.client.stop_job(&job.id).await {
                    tracing::warn!(job = %job.id, error = %e, "stopping an ai-toolkit job failed");
                }
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "relaying ai-toolkit progress failed")
            }
        }
    }

    /// A completed job: deliver once (in a task), Running until the delivery ends.
    fn completed(&self, i: &Instance, job: &Job) -> Observed {
        let Some((remote, _)) = self.remote(i) else {
            return Observed::Ended {
                outcome: "trained",
                reason: Some(
                    "ai-toolkit completed the job but this engine cannot act for the attempt"
                        .to_owned(),
                ),
                gone: false,
            };
        };
        let mut runs = self.runs();
        let Some(tracked) = runs.get_mut(&i.provider_id) else {
            return Observed::Running;
        };
        let slot = tracked.delivery.get_or_insert_with(|| {
            let job = deliver::DeliverJob {
                client: self.client.clone(),
                remote: remote.clone(),
                job: job.clone(),
                dir: self.job_dir(&i.instance_name).join("out"),
                max_model_bytes: self.settings.max_model_bytes,
                max_sample_bytes: self.settings.max_sample_bytes,
                unet: self.settings.unet,
            };
            deliver::spawn(job)
        });
        match slot.state() {
            Delivery::Running => Observed::Running,
            Delivery::Delivered => Observed::Ended {
                outcome: "trained",
                reason: None,
                gone: false,
            },
            Delivery::Failed { code, reason } => Observed::Ended {
                outcome: code,
                reason: Some(reason),
                gone: false,
            },
        }
    }

    async fn log_tail(&self, id: &str) -> String {
        match self.client.log(id, 0).await {
            Ok(log) => {
                let text = log.log;
                let mut start = text.len().saturating_sub(LOG_TAIL_BYTES);
                while !text.is_char_boundary(start) {
                    start += 1;
                }
                text[start..].to_owned()
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "reading an ai-toolkit log failed");
                String::new()
            }
        }
    }

    /// Reports the attempt's failure over the worker protocol, once.
    async fn report_failure(&self, i: &Instance, code: &str, reason: &str) {
        if self
            .runs()
            .get(&i.provider_id)
            .is_some_and(|t| t.failure_reported)
        {
            return;
        }
        let Some((remote, attempt)) = self.remote(i) else {
            return;
        };
        let retryable = outcome::spec(code)
            .is_none_or(|s| !matches!(s.disposition, outcome::Disposition::Fail));
        match remote.fail(attempt, code, reason, retryable).await {
            Ok(()) | Err(RemoteError::NotActive) => {
                if let Some(t) = self.runs().get_mut(&i.provider_id) {
                    t.failure_reported = true;
                }
            }
            Err(e) => {
                tracing::warn!(lora = %i.lora_id, error = %e, "reporting an ai-toolkit failure failed")
            }
        }
    }
}

#[async_trait]
impl TrainingBackend for AiToolkitBackend {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn max_runs(&self) -> usize {
        self.settings.max_runs
    }

    fn scope(&self) -> Scope {
        Scope::Shared
    }

    fn observe_every(&self) -> Duration {
        self.settings.observe_every
    }

    async fn launch(&self, launch: &Launch) -> Result<Launched, BackendError> {
        let remote = RemoteAttempt::new(&launch.server, &launch.lora_id.to_string(), &launch.token)
            .map_err(|e| remote_error("acting for the attempt", e))?;
        let job = self.launch_job(launch, &remote).await?;
        self.start(&job).await?;
        tracing::info!(job = %job.id, lora = %launch.lora_id, attempt = launch.attempt, "ai-toolkit job started");
        self.runs().insert(
            job.id.clone(),
            Tracked {
                remote,
                attempt: u64::from(launch.attempt),
                stopped_by_us: false,
                failure_reported: false,
                delivery: None,
            },
        );
        Ok(Launched {
            provider_id: job.id,
            gpu_type: None,
            price_per_hour: self.settings.price_per_hour,
        })
    }

    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError> {
        let calls: Vec<_> = instances.iter().map(|i| self.observe_one(i)).collect();
        let seen: Vec<_> = futures::stream::iter(calls)
            .buffered(OBSERVE_CONCURRENCY)
            .collect()
            .await;
        seen.into_iter().collect()
    }

    async fn terminate(&self, i: &Instance, _ending: Ending) -> Result<Termination, BackendError> {
        // A delivery still running is of no use any more.
        if let Some(slot) = self
            .runs()
            .get(&i.provider_id)
            .and_then(|t| t.delivery.as_ref())
        {
            slot.abort();
        }
        match self.client.job(&i.provider_id).await {
            Ok(Some(job)) => {
                if job.status.is_active() {
                    match self.client.stop_job(&job.id).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(backend_error("stopping the job", e)),
                    }
                }
                match self.client.delete_job(&job.id).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(backend_error("deleting the job", e)),
                }
            }
            Ok(None) => {}
            Err(e) => return Err(backend_error("reading a job", e)),
        }
        match self
            .client
            .delete_dataset(&sanitize_dataset_name(&i.instance_name))
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(backend_error("deleting the dataset", e)),
        }
        let _ = tokio::fs::remove_dir_all(self.job_dir(&i.instance_name)).await;
        self.runs().remove(&i.provider_id);
        Ok(Termination {
            gone: true,
            billed_millis: None,
        })
    }

    async fn list_instances(
        &self,
        prefix: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        let jobs = self
            .client
            .jobs()
            .await
            .map_err(|e| backend_error("listing jobs", e))?;
        Ok(Some(
            jobs.into_iter()
                .filter(|j| j.name.starts_with(prefix))
                .map(|j| (j.id, j.name))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_becomes_a_stage() {
        assert_eq!(stage_of("Loading model").as_deref(), Some("loading_model"));
        assert_eq!(stage_of("Training").as_deref(), Some("training"));
        assert_eq!(
            stage_of("Generating Images - 1/3").as_deref(),
            Some("generating_images")
        );
        assert_eq!(stage_of("  "), None);
        assert_eq!(stage_of("123"), None);
        assert!(stage_of(&"a ".repeat(100)).is_some_and(|s| s.len() <= 64 && !s.ends_with('_')));
    }

    #[test]
    fn failures_are_named_from_the_log() {
        assert_eq!(
            failure_code("...\ntorch.OutOfMemoryError: CUDA out of memory. Tried"),
            "out_of_memory"
        );
        assert_eq!(failure_code("loss is NaN at step 3"), "non_finite_loss");
        assert_eq!(failure_code("KeyError: 'x'"), PROVIDER_FAILED);
    }
}
