//! The `replicate` backend: one Replicate training per attempt, running our trainer as a Cog
//! model (`cog/`), while the control plane plays the worker's part over the worker protocol
//! ([`RemoteAttempt`]).
//!
//! - Launch: the job is fetched with the attempt's token; its `dataset_zip` link and trainer spec
//!   become the training's input (`dataset_url`, `spec`), tagged with the instance's name
//!   ([`INSTANCE_TAG`]). The create is never repeated blindly: a relaunch (`Launch::retry`) and a
//!   create whose answer was lost look for the tagged training first
//!   ([`ReplicateClient::create_training_once`]).
//! - Observe: one `GET` per training (webhooks only make the engine look sooner). A live
//!   training's newest trainer progress (its `logs`) is posted as the attempt's progress on
//!   every observe, which keeps the job's lease; a job that no longer wants the attempt gets
//!   its training cancelled. A succeeded training's tar is downloaded, unpacked and delivered
//!   in a task of its own (observe has a call timeout), reported `Running` until that task
//!   ended, and never started twice. A failed one reports the trainer's last error line's code
//!   (else `provider_failed`). Ended trainings are not yet gone: `terminate` reads
//!   `metrics.predict_time` for the bill.
//! - Terminate: a live training is cancelled (idempotent); gone once terminal or unknown;
//!   billed `predict_time` × the price per second (handed to the engine per hour).
//! - After a restart of `serve` the attempts' tokens are gone: one is issued again for (LoRA,
//!   attempt, this engine's worker id) through [`WorkerTokens`]; the job's lease belongs to the
//!   same worker id across restarts.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;

use loraforge_domain::{MicroUsd, outcome};
use loraforge_engine::{
    BackendError, Ending, Instance, Launch, Launched, Observed, Scope, Termination,
    TrainingBackend, WorkerTokens,
};
use loraforge_worker::remote::{RemoteAttempt, RemoteError, TrainerLog};

use crate::deliver::{self, DeliverError};
use crate::{
    CreateTraining, INSTANCE_TAG, ModelRef, ReplicateClient, ReplicateError, Training,
    TrainingStatus,
};

/// `GET /trainings/{id}` calls in flight at once during one observe.
const GET_CONCURRENCY: usize = 8;
/// How often a delivery that failed for a passing reason is tried again before the attempt is
/// reported failed.
const DELIVERY_TRIES: u32 = 3;

/// How trainings are created and billed.
#[derive(Clone)]
pub struct ReplicateBackendSettings {
    /// The backend's name in the database. Default "replicate".
    pub name: String,
    /// The Cog model version trainings run (`owner/name:version`).
    pub model: ModelRef,
    /// `owner/name` the trained versions go to; it must exist on Replicate.
    pub destination: String,
    /// Trainings at once across every replica. Default 4.
    pub max_runs: usize,
    /// What a second of `predict_time` costs; `None` records no cost.
    pub price_per_second: Option<MicroUsd>,
    /// How often the engine polls the trainings. Default 10 s.
    pub observe_every: Duration,
    /// Where Replicate posts the training's events (`<server>/api/v1/webhooks/replicate`);
    /// `None`: no webhooks (set it only where deliveries are verified: an unsigned one is
    /// refused).
    pub webhook: Option<String>,
    /// The control plane's URL as the worker protocol is reached (for attempts picked up after
    /// a restart; a launch brings its own).
    pub server: String,
    /// Issues a token again for an attempt launched before a restart.
    pub tokens: Option<Arc<dyn WorkerTokens>>,
    /// This engine's worker id (the engine setting), for tokens issued again.
    pub worker_id: String,
    /// Where tars are downloaded and unpacked (a folder of the data dir).
    pub scratch_dir: PathBuf,
    /// The largest tar accepted, and the most it may unpack to. Default 4 GiB.
    pub max_weights_bytes: u64,
}

impl std::fmt::Debug for ReplicateBackendSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicateBackendSettings")
            .field("name", &self.name)
            .field("model", &self.model.to_string())
            .field("destination", &self.destination)
            .field("max_runs", &self.max_runs)
            .field("price_per_second", &self.price_per_second)
            .field("observe_every", &self.observe_every)
            .field("webhook", &self.webhook)
            .field("server", &self.server)
            .field("worker_id", &self.worker_id)
            .field("scratch_dir", &self.scratch_dir)
            .finish_non_exhaustive()
    }
}

impl ReplicateBackendSettings {
    pub fn new(model: ModelRef, destination: impl Into<String>, scratch_dir: PathBuf) -> Self {
        Self {
            name: "replicate".to_owned(),
            model,
            destination: destination.into(),
            max_runs: 4,
            price_per_second: None,
            observe_every: Duration::from_secs(10),
            webhook: None,
            server: String::new(),
            tokens: None,
            worker_id: String::new(),
            scratch_dir,
            max_weights_bytes: 4 << 30,
        }
    }

    /// The per-second price as the engine takes it: per hour.
    pub fn price_per_hour(&self) -> Option<MicroUsd> {
        self.price_per_second
            .map(|p| MicroUsd(p.0.saturating_mul(3600)))
    }
}

/// Where a succeeded training's delivery stands.
enum Delivery {
    /// `tries`: how many earlier deliveries failed for a passing reason.
    Running {
        task: tokio::task::JoinHandle<Result<(), DeliverError>>,
        tries: u32,
    },
    Done(Result<(), String>),
}

#[derive(Debug, Default)]
struct Memory {
    /// Training id → the attempt's worker-protocol handle and attempt number.
    attempts: HashMap<String, (RemoteAttempt, u64)>,
    /// Trainings we cancelled (their `canceled` is ours, not the provider's).
    cancelled: HashSet<String>,
}

pub struct ReplicateBackend {
    client: ReplicateClient,
    http: reqwest::Client,
    settings: ReplicateBackendSettings,
    memory: Mutex<Memory>,
    deliveries: Mutex<HashMap<String, Delivery>>,
}

impl std::fmt::Debug for ReplicateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicateBackend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn backend_error(what: &str, e: ReplicateError) -> BackendError {
    match e {
        ReplicateError::Missing(detail) => BackendError::Permanent(format!(
            "{what}: {detail} (check LORAFORGE_REPLICATE_MODEL and LORAFORGE_REPLICATE_DESTINATION)"
        )),
        ReplicateError::Unauthorized(_) => {
            BackendError::Permanent(format!("{what}: {e} (check LORAFORGE_REPLICATE_API_TOKEN)"))
        }
        ReplicateError::Rejected { status: 422, .. } => BackendError::Permanent(format!(
            "{what}: {e} (LORAFORGE_REPLICATE_MODEL must be a version of our cog/ model, whose \
             train() declares dataset_url, spec and {INSTANCE_TAG})"
        )),
        ReplicateError::Rejected { .. } => BackendError::Permanent(format!("{what}: {e}")),
        // Replicate is fine, we are too fast: wait as asked, not a failure of the provider.
        ReplicateError::RateLimited { retry_after } => BackendError::Throttled {
            message: format!("{what}: {e}"),
            retry_after,
        },
        e => BackendError::Transient(format!("{what}: {e}")),
    }
}

fn remote_error(what: &str, e: RemoteError) -> BackendError {
    match e {
        RemoteError::Permanent(m) => BackendError::Permanent(format!("{what}: {m}")),
        RemoteError::Transient(m) => BackendError::Transient(format!("{what}: {m}")),
        RemoteError::NotActive => {
            BackendError::Transient(format!("{what}: the job no longer wants this attempt"))
        }
    }
}

fn ended(code: &str, reason: Option<String>) -> Observed {
    let code = outcome::spec(code).map_or("provider_failed", |s| s.code);
    Observed::Ended {
        outcome: code,
        reason,
        gone: false,
    }
}

impl ReplicateBackend {
    pub fn new(
        client: ReplicateClient,
        settings: ReplicateBackendSettings,
    ) -> Result<Self, BackendError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| BackendError::Permanent(format!("cannot set up HTTP: {e}")))?;
        Ok(Self {
            client,
            http,
            settings,
            memory: Mutex::new(Memory::default()),
            deliveries: Mutex::new(HashMap::new()),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliveries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Delivery>> {
        self.deliveries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The attempt's worker-protocol handle: kept from the launch, else made with a token
    /// issued again (after a restart of `serve`).
    fn remote(&self, instance: &Instance) -> Result<(RemoteAttempt, u64), String> {
        if let Some(found) = self.memory().attempts.get(&instance.provider_id) {
            return Ok(found.clone());
        }
        let tokens = self
            .settings
            .tokens
            .as_ref()
            .ok_or("no token for this attempt and no way to issue one")?;
        let token = tokens.issue(instance.lora_id, instance.attempt, &self.settings.worker_id)?;
        let remote =
            RemoteAttempt::new(&self.settings.server, &instance.lora_id.to_string(), &token)
                .map_err(|e| e.to_string())?;
        let found = (remote, u64::from(instance.attempt));
        self.memory()
            .attempts
            .insert(instance.provider_id.clone(), found.clone());
        Ok(found)
    }

    fn forget(&self, id: &str) {
        let mut memory = self.memory();
        memory.attempts.remove(id);
        memory.cancelled.remove(id);
        if let Some(Delivery::Running { task, .. }) = self.deliveries().remove(id) {
            task.abort();
        }
    }

    async fn cancel(&self, id: &str) -> Result<Option<Training>, ReplicateError> {
        self.memory().cancelled.insert(id.to_owned());
        self.client.cancel(id).await
    }

    /// One training's observation.
    async fn observe_one(&self, instance: &Instance, training: Option<Training>) -> Observed {
        let Some(training) = training else {
            return Observed::Ended {
                outcome: "provider_failed",
                reason: Some("Replicate no longer knows the training".to_owned()),
                gone: true,
            };
        };
        let log = TrainerLog::read(training.logs.as_deref().unwrap_or(""));
        match &training.status {
            TrainingStatus::Starting | TrainingStatus::Processing | TrainingStatus::Other(_) => {
                self.relay(instance, &training, &log).await
            }
            TrainingStatus::Succeeded => self.bring_home(instance, &training),
            TrainingStatus::Failed => {
                let code = log
                    .error_code
                    .clone()
                    .unwrap_or_else(|| "provider_failed".to_owned());
                let reason = log
                    .error_reason
                    .clone()
                    .or_else(|| training.error_text())
                    .unwrap_or_else(|| "the training failed on Replicate".to_owned());
                self.report_failure(instance, &code, &reason).await;
                ended(&code, Some(reason))
            }
            TrainingStatus::Canceled | TrainingStatus::Aborted => {
                if self.memory().cancelled.contains(&training.id) {
                    ended("stopped", Some("the training was cancelled".to_owned()))
                } else {
                    let reason = "the training was cancelled on Replicate".to_owned();
                    self.report_failure(instance, "provider_failed", &reason)
                        .await;
                    ended("provider_failed", Some(reason))
                }
            }
        }
    }

    /// A live training: its progress (or a heartbeat) keeps the job's lease; a job that no
    /// longer wants the attempt gets the training cancelled.
    async fn relay(&self, instance: &Instance, training: &Training, log: &TrainerLog) -> Observed {
        let (remote, attempt) = match self.remote(instance) {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(training = %training.id, %error, "cannot speak for a Replicate training");
                return Observed::Running;
            }
        };
        match remote.progress(attempt, &log.progress).await {
            Ok(true) => Observed::Running,
            Ok(false) => {
                tracing::info!(training = %training.id, lora = %instance.lora_id, "the job no longer wants the training; cancelling it");
                if let Err(error) = self.cancel(&training.id).await {
                    tracing::warn!(training = %training.id, %error, "cancelling a Replicate training failed");
                }
                ended(
                    "stopped",
                    Some("the job no longer wants this attempt".to_owned()),
                )
            }
            Err(error) => {
                tracing::warn!(training = %training.id, %error, "relaying a Replicate training's progress failed");
                Observed::Running
            }
        }
    }

    async fn report_failure(&self, instance: &Instance, code: &str, reason: &str) {
        match self.remote(instance) {
            Ok((remote, attempt)) => {
                if let Err(error) = remote.fail(attempt, code, reason, false).await {
                    tracing::warn!(lora = %instance.lora_id, %error, "reporting a Replicate training's failure failed");
                }
            }
            Err(error) => {
                tracing::warn!(lora = %instance.lora_id, %error, "cannot report a Replicate training's failure");
            }
        }
    }

    /// A succeeded training: its delivery is started once, in a task, and reported `Running`
    /// until it ended; a delivery that failed for a passing reason starts again (at most
    /// [`DELIVERY_TRIES`] times).
    fn bring_home(&self, instance: &Instance, training: &Training) -> Observed {
        let id = training.id.clone();
        let mut deliveries = self.deliveries();
        let tries = match deliveries.remove(&id) {
            None => 0,
            Some(Delivery::Done(Ok(()))) => {
                deliveries.insert(id, Delivery::Done(Ok(())));
                return ended("trained", None);
            }
            Some(Delivery::Done(Err(reason))) => {
                deliveries.insert(id, Delivery::Done(Err(reason.clone())));
                return ended("provider_failed", Some(reason));
            }
            Some(Delivery::Running { task, tries }) if !task.is_finished() => {
                deliveries.insert(id, Delivery::Running { task, tries });
                return Observed::Running;
            }
            Some(Delivery::Running { task, tries }) => {
                let result = futures::FutureExt::now_or_never(task)
                    .unwrap_or_else(|| Ok(Err(DeliverError::Transient("unfinished".to_owned()))))
                    .unwrap_or_else(|e| {
                        Err(DeliverError::Transient(format!(
                            "the delivery stopped: {e}"
                        )))
                    });
                match result {
                    Ok(()) => {
                        tracing::info!(training = %id, lora = %instance.lora_id, "Replicate training delivered");
                        deliveries.insert(id, Delivery::Done(Ok(())));
                        return ended("trained", None);
                    }
                    Err(DeliverError::NotActive) => {
                        let reason = "the job no longer wants this attempt".to_owned();
                        deliveries.insert(id, Delivery::Done(Err(reason.clone())));
                        return ended("stopped", Some(reason));
                    }
                    Err(DeliverError::Permanent(reason)) => {
                        return self.delivery_failed(deliveries, instance, id, reason);
                    }
                    Err(DeliverError::Transient(reason)) => {
                        tracing::warn!(training = %id, %reason, "delivering a Replicate training failed");
                        if tries + 1 >= DELIVERY_TRIES {
                            let reason = format!(
                                "the trained files could not be brought home from Replicate: {reason}"
                            );
                            return self.delivery_failed(deliveries, instance, id, reason);
                        }
                        tries + 1
                    }
                }
            }
        };
        let Some(url) = training.weights_url().map(str::to_owned) else {
            let reason = "the succeeded training has no output.weights".to_owned();
            return self.delivery_failed(deliveries, instance, id, reason);
        };
        let remote = match self.remote(instance) {
            Ok((remote, _)) => remote,
            Err(error) => {
                tracing::warn!(training = %id, %error, "cannot deliver a Replicate training");
                return Observed::Running;
            }
        };
        let (http, scratch, max) = (
            self.http.clone(),
            self.settings.scratch_dir.clone(),
            self.settings.max_weights_bytes,
        );
        let task = tokio::spawn(async move {
            tokio::fs::create_dir_all(&scratch).await.map_err(|e| {
                DeliverError::Transient(format!("cannot make {}: {e}", scratch.display()))
            })?;
            deliver::deliver(&http, &remote, &url, &scratch, max).await
        });
        deliveries.insert(id, Delivery::Running { task, tries });
        Observed::Running
    }

    /// The outputs cannot be delivered: the attempt is reported failed (in the background:
    /// the lock on deliveries is held here).
    fn delivery_failed(
        &self,
        mut deliveries: std::sync::MutexGuard<'_, HashMap<String, Delivery>>,
        instance: &Instance,
        id: String,
        reason: String,
    ) -> Observed {
        tracing::warn!(training = %id, %reason, "a Replicate training's outputs cannot be delivered");
        deliveries.insert(id, Delivery::Done(Err(reason.clone())));
        drop(deliveries);
        if let Ok((remote, attempt)) = self.remote(instance) {
            let why = reason.clone();
            tokio::spawn(async move {
                if let Err(error) = remote.fail(attempt, "provider_failed", &why, false).await {
                    tracing::warn!(%error, "reporting a failed delivery failed");
                }
            });
        }
        ended("provider_failed", Some(reason))
    }
}

#[async_trait]
impl TrainingBackend for ReplicateBackend {
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
            .map_err(|e| remote_error("preparing the attempt", e))?;
        let job = remote
            .job()
            .await
            .map_err(|e| remote_error("fetching the job for Replicate", e))?;
        let Some(dataset_url) = job.dataset_zip.clone() else {
            return Err(BackendError::Permanent(
                "the control plane offers no dataset zip link (`dataset_zip` in the worker's job); \
                 Replicate trainings need one"
                    .to_owned(),
            ));
        };
        let input = json!({
            "dataset_url": dataset_url,
            "spec": job.trainer_spec.to_string(),
            INSTANCE_TAG: launch.instance_name,
        });
        let create = CreateTraining {
            destination: self.settings.destination.clone(),
            input,
            webhook: self.settings.webhook.clone(),
            webhook_events_filter: vec!["start".to_owned(), "completed".to_owned()],
        };
        let training = self
            .client
            .create_training_once(
                &self.settings.model,
                &create,
                &launch.instance_name,
                launch.retry,
            )
            .await
            .map_err(|e| backend_error("creating a Replicate training", e))?;
        tracing::info!(training = %training.id, lora = %launch.lora_id, attempt = launch.attempt, "Replicate training created");
        self.memory()
            .attempts
            .insert(training.id.clone(), (remote, job.attempt));
        Ok(Launched {
            provider_id: training.id,
            gpu_type: None,
            price_per_hour: self.settings.price_per_hour(),
        })
    }

    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError> {
        let calls: Vec<_> = instances
            .iter()
            .map(|i| self.client.training(&i.provider_id))
            .collect();
        let trainings: Vec<_> = futures::stream::iter(calls)
            .buffered(GET_CONCURRENCY)
            .collect()
            .await;
        let mut observed = Vec::with_capacity(instances.len());
        for (instance, training) in instances.iter().zip(trainings) {
            let training =
                training.map_err(|e| backend_error("reading a Replicate training", e))?;
            observed.push(self.observe_one(instance, training).await);
        }
        Ok(observed)
    }

    async fn terminate(
        &self,
        instance: &Instance,
        ending: Ending,
    ) -> Result<Termination, BackendError> {
        let id = &instance.provider_id;
        let mut training = self
            .client
            .training(id)
            .await
            .map_err(|e| backend_error("reading a Replicate training", e))?;
        if let Some(t) = &training
            && !t.status.is_terminal()
        {
            training = self
                .cancel(id)
                .await
                .map_err(|e| backend_error("cancelling a Replicate training", e))?;
            tracing::info!(training = %id, lora = %instance.lora_id, ?ending, "Replicate training cancelled");
        }
        let gone = training.as_ref().is_none_or(|t| t.status.is_terminal());
        if gone {
            // A delivery still running when the run is stopped is of no use any more.
            self.forget(id);
        }
        Ok(Termination {
            gone,
            billed_millis: training.and_then(|t| t.predict_millis()).filter(|_| gone),
        })
    }

    async fn list_instances(
        &self,
        prefix: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        let found = self
            .client
            .list_tagged(self.client.settings().search_pages, |tag| {
                tag.starts_with(prefix)
            })
            .await
            .map_err(|e| backend_error("listing Replicate trainings", e))?;
        Ok(Some(
            found
                .into_iter()
                .filter(|t| !t.status.is_terminal())
                .filter_map(|t| Some((t.id.clone(), t.instance_tag()?.to_owned())))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_errors_map_to_what_the_engine_does_next() {
        // 429: slow down, not a failure of the provider; the wait goes with it.
        let throttled = backend_error(
            "creating a Replicate training",
            ReplicateError::RateLimited {
                retry_after: Some(Duration::from_secs(3)),
            },
        );
        match &throttled {
            BackendError::Throttled {
                message,
                retry_after,
            } => {
                assert_eq!(*retry_after, Some(Duration::from_secs(3)));
                assert!(message.contains("HTTP 429"), "{message}");
            }
            other => panic!("expected Throttled, got {other:?}"),
        }
        assert!(throttled.is_retryable() && !throttled.is_provider_failure());
        // 422: the model does not take our inputs; never worth repeating, and it says where to look.
        let refused = backend_error(
            "creating a Replicate training",
            ReplicateError::Rejected {
                status: 422,
                detail: "- input: Additional property loraforge_instance is not allowed".into(),
            },
        );
        assert!(
            matches!(&refused, BackendError::Permanent(m) if m.contains("LORAFORGE_REPLICATE_MODEL") && m.contains(INSTANCE_TAG)),
            "{refused:?}"
        );
        assert!(
            backend_error(
                "x",
                ReplicateError::Server {
                    status: 503,
                    body: String::new()
                }
            )
            .is_provider_failure()
        );
    }
}
