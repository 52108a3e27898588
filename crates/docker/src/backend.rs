//! [`DockerBackend`]: the `TrainingBackend` over one Docker host.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, DeviceRequest, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use futures::TryStreamExt;

use loraforge_domain::outcome;
use loraforge_engine::{
    BackendError, Ending, Instance, Launch, Launched, Observed, Scope, Task, Termination,
    TrainingBackend,
};

use crate::error::{backend_error, status_of, timed_out};
use crate::labels;
use crate::settings::{DockerSettings, Gpus};

pub struct DockerBackend {
    docker: Docker,
    settings: DockerSettings,
    /// The pull of the image under way, if any.
    pull: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), BackendError>>>>,
    /// When the engine first asked to end each finished run's container (by container id): it
    /// is stopped only once `finish_grace` has passed since.
    finish_asked: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("name", &self.settings.name)
            .field("image", &self.settings.image)
            .finish_non_exhaustive()
    }
}

/// A call's own result, or `Err` when it ran past its limit.
async fn within<T>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, DockerError>>,
) -> Result<Result<T, DockerError>, BackendError> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| timed_out(what, limit))
}

/// Docker's name for a container in a listing (`/name` → `name`).
fn summary_name(c: &ContainerSummary) -> Option<&str> {
    c.names
        .as_ref()?
        .first()
        .map(|n| n.strip_prefix('/').unwrap_or(n))
}

/// The outcome code of a container that exited with `code` (`OOMKilled` aside).
fn exit_outcome(code: i64) -> &'static str {
    // 128 + n is a process killed by signal n, as the runtime reports it.
    let code = i32::try_from(code)
        .ok()
        .filter(|c| !(129..=192).contains(c));
    outcome::from_exit(code).code
}

/// A launch that waits for the image to arrive.
fn pulling(image: &str) -> BackendError {
    BackendError::NoCapacity(format!(
        "the worker image {image} is being pulled onto the Docker host"
    ))
}

/// Pulls `image`; a failure says what to fix.
async fn pull_image(docker: Docker, image: String, limit: Duration) -> Result<(), BackendError> {
    let options = CreateImageOptions {
        from_image: Some(image.clone()),
        ..Default::default()
    };
    let pull = docker
        .create_image(Some(options), None, None)
        .try_collect::<Vec<_>>();
    match within("pulling the image", limit, pull).await? {
        Ok(_) => {
            tracing::info!(%image, "worker image pulled");
            Ok(())
        }
        Err(e) => {
            let retry = status_of(&e).is_some_and(|s| s >= 500 || s == 429);
            let message = format!(
                "the worker image {image} is not on the Docker host and could not be pulled: {e}; check LORAFORGE_DOCKER_IMAGE and the host's registry login (docker login)"
            );
            Err(if retry {
                BackendError::Transient(message)
            } else {
                BackendError::Permanent(message)
            })
        }
    }
}

impl DockerBackend {
    pub fn new(docker: Docker, settings: DockerSettings) -> Self {
        Self {
            docker,
            settings,
            pull: tokio::sync::Mutex::new(None),
            finish_asked: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &DockerSettings {
        &self.settings
    }

    fn managed() -> ListContainersOptions {
        ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{}=true", labels::MANAGED)],
            )])),
            ..Default::default()
        }
    }

    /// Every container this backend made (running or not), from one listing.
    async fn list_managed(&self) -> Result<Vec<ContainerSummary>, BackendError> {
        let limit = self.settings.call_timeout;
        within(
            "listing containers",
            limit,
            self.docker.list_containers(Some(Self::managed())),
        )
        .await?
        .map_err(|e| backend_error("listing containers", e))
    }

    /// Pulls the image unless the host has it.
    async fn ensure_image(&self) -> Result<(), BackendError> {
        let image = &self.settings.image;
        let limit = self.settings.call_timeout;
        match within(
            "inspecting the image",
            limit,
            self.docker.inspect_image(image),
        )
        .await?
        {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(backend_error("inspecting the image", e)),
        }
        // A pull of a multi-GB image outlasts the engine's limit on a launch, so it runs in its
        // own task: a launch waits for it up to `pull_wait`, then leaves the job queued (no
        // capacity here for now) and a later launch finds the pull done or still going.
        let Ok(mut pull) = self.pull.try_lock() else {
            return Err(pulling(image));
        };
        if pull.is_none() {
            tracing::info!(%image, "pulling the worker image");
            *pull = Some(tokio::spawn(pull_image(
                self.docker.clone(),
                image.clone(),
                self.settings.pull_timeout,
            )));
        }
        let Some(task) = pull.as_mut() else {
            return Err(pulling(image));
        };
        match tokio::time::timeout(self.settings.pull_wait, task).await {
            Err(_) => Err(pulling(image)),
            Ok(done) => {
                *pull = None;
                done.unwrap_or_else(|e| {
                    Err(BackendError::Transient(format!("pulling the image: {e}")))
                })
            }
        }
    }

    fn create_body(&self, launch: &Launch) -> ContainerCreateBody {
        let mut env = launch.worker_env();
        env.extend(self.settings.env.iter().cloned());
        let mut labels = HashMap::from([
            (labels::INSTANCE.to_owned(), launch.instance_name.clone()),
            (labels::LORA.to_owned(), launch.lora_id.to_string()),
            (labels::ATTEMPT.to_owned(), launch.attempt.to_string()),
            (labels::MANAGED.to_owned(), "true".to_owned()),
        ]);
        if let Task::Sample { batch } = launch.task {
            labels.insert(labels::SAMPLE_BATCH.to_owned(), batch.to_string());
        }
        let gpu = |count: Option<i64>, ids: Option<Vec<String>>| DeviceRequest {
            driver: Some("nvidia".to_owned()),
            count,
            device_ids: ids,
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..Default::default()
        };
        let device_requests = match &self.settings.gpus {
            Gpus::None => None,
            Gpus::All => Some(vec![gpu(Some(-1), None)]),
            Gpus::Count(n) => Some(vec![gpu(Some(i64::from(*n)), None)]),
            Gpus::Ids(ids) => Some(vec![gpu(None, Some(ids.clone()))]),
        };
        let memory = self
            .settings
            .memory_mb
            .and_then(|mb| i64::try_from(mb).ok())
            .and_then(|mb| mb.checked_mul(1024 * 1024));
        ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            cmd: Some(self.settings.command.clone()),
            env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                device_requests,
                memory,
                nano_cpus: self.settings.nano_cpus,
                network_mode: self.settings.network.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the container, or finds the one a create whose answer was lost made (409).
    async fn create(&self, launch: &Launch) -> Result<String, BackendError> {
        let options = CreateContainerOptions {
            name: Some(launch.instance_name.clone()),
            ..Default::default()
        };
        let limit = self.settings.call_timeout;
        let created = within(
            "creating a container",
            limit,
            self.docker
                .create_container(Some(options), self.create_body(launch)),
        )
        .await?;
        match created {
            Ok(answer) => Ok(answer.id),
            Err(e) if status_of(&e) == Some(409) => match self.find(&launch.instance_name).await? {
                Some(c) => {
                    tracing::warn!(name = %launch.instance_name, "a container of this attempt exists already; using it");
                    c.id.ok_or_else(|| {
                        BackendError::Transient("Docker listed a container without an id".into())
                    })
                }
                None => Err(backend_error("creating a container", e)),
            },
            Err(e) if status_of(&e) == Some(404) => Err(BackendError::Permanent(format!(
                "Docker has no image {}: {e}; check LORAFORGE_DOCKER_IMAGE",
                self.settings.image
            ))),
            Err(e) => Err(backend_error("creating a container", e)),
        }
    }

    /// The managed container named `name`, if any.
    async fn find(&self, name: &str) -> Result<Option<ContainerSummary>, BackendError> {
        Ok(self
            .list_managed()
            .await?
            .into_iter()
            .find(|c| summary_name(c) == Some(name)))
    }

    /// Starts `id`; a start that can never work (no GPU, a bad config) removes the container
    /// so the attempt's name is free when the job is launched again.
    async fn start(&self, id: &str) -> Result<(), BackendError> {
        let limit = self.settings.call_timeout;
        let started = within(
            "starting a container",
            limit,
            self.docker.start_container(id, None),
        )
        .await?;
        let Err(e) = started else { return Ok(()) };
        let error = backend_error("starting a container", e);
        // No GPU (`NoCapacity`) or a config Docker refuses: never worth starting again.
        if matches!(
            error,
            BackendError::NoCapacity(_) | BackendError::Permanent(_)
        ) && let Err(cleanup) = self.remove(id).await
        {
            tracing::warn!(container = %id, error = %cleanup, "removing a container that could not start");
        }
        Err(error)
    }

    /// Force-removes `id`; `true` when Docker no longer has it.
    async fn remove(&self, id: &str) -> Result<bool, BackendError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        let limit = self.settings.call_timeout;
        match within(
            "removing a container",
            limit,
            self.docker.remove_container(id, Some(options)),
        )
        .await?
        {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(true),
            // "removal of container … is already in progress"
            Err(e) if status_of(&e) == Some(409) => Ok(false),
            Err(e) => Err(backend_error("removing a container", e)),
        }
    }

    /// `stop`: SIGTERM, SIGKILL after `stop_timeout`; a container already stopped or gone is fine.
    async fn stop(&self, id: &str) -> Result<(), BackendError> {
        let t = self.settings.stop_timeout;
        let options = StopContainerOptions {
            t: Some(i32::try_from(t.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        // Docker answers a stop once the container has stopped: allow its timeout on top.
        let limit = self.settings.call_timeout + t;
        match within(
            "stopping a container",
            limit,
            self.docker.stop_container(id, Some(options)),
        )
        .await?
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(backend_error("stopping a container", e)),
        }
    }

    /// What an exited container's end says: its exit code through the outcome table, or
    /// `out_of_memory` when the kernel killed it at its memory limit.
    async fn exited(&self, id: &str, status_text: Option<&str>) -> Observed {
        let limit = self.settings.call_timeout;
        let inspected = within(
            "inspecting a container",
            limit,
            self.docker
                .inspect_container(id, None::<InspectContainerOptions>),
        )
        .await;
        let state = match inspected {
            Ok(Ok(c)) => c.state,
            Ok(Err(e)) if status_of(&e) == Some(404) => {
                return Observed::Ended {
                    outcome: "vanished",
                    reason: Some(format!("container {id} no longer exists")),
                    gone: true,
                };
            }
            _ => None,
        };
        let Some(state) = state else {
            return Observed::Ended {
                outcome: "vanished",
                reason: Some(format!(
                    "container {id} ended ({})",
                    status_text.unwrap_or("exited")
                )),
                gone: false,
            };
        };
        let code = state.exit_code.unwrap_or(0);
        if state.oom_killed == Some(true) {
            let limit = self
                .settings
                .memory_mb
                .map_or("the host's memory".to_owned(), |mb| {
                    format!("its {mb} MiB limit (LORAFORGE_DOCKER_MEMORY_MB)")
                });
            return Observed::Ended {
                outcome: "out_of_memory",
                reason: Some(format!("container {id} was killed at {limit}")),
                gone: false,
            };
        }
        Observed::Ended {
            outcome: exit_outcome(code),
            reason: Some(format!("container {id} exited with status {code}")),
            gone: false,
        }
    }
}

#[async_trait]
impl TrainingBackend for DockerBackend {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn max_runs(&self) -> usize {
        self.settings.max_runs
    }

    fn scope(&self) -> Scope {
        Scope::Shared
    }

    /// A container runs the worker image, whose `loraforge worker` renders a batch when its
    /// environment names one (`LORAFORGE_SAMPLE_BATCH`). The container is named
    /// `domain::run::sample_instance_name` (which the orphan sweep reads back) and carries the
    /// `loraforge.managed` label the sweep's listing filters on, like a training container, and
    /// `loraforge.sample_batch` for people; observe and terminate go by container id.
    fn runs_samples(&self) -> bool {
        true
    }

    fn observe_every(&self) -> Duration {
        self.settings.observe_every
    }

    async fn launch(&self, launch: &Launch) -> Result<Launched, BackendError> {
        let launched = |id: String| Launched {
            provider_id: id,
            gpu_type: self.settings.gpus.describe(),
            price_per_hour: self.settings.price_per_hour,
        };
        // A retried launch whose first answer was lost may have made (and started) the container.
        if launch.retry
            && let Some(c) = self.find(&launch.instance_name).await?
            && let Some(id) = c.id.clone()
        {
            tracing::warn!(container = %id, name = %launch.instance_name, "a container of this attempt exists already; using it");
            if matches!(c.state, Some(ContainerSummaryStateEnum::CREATED)) {
                self.start(&id).await?;
            }
            return Ok(launched(id));
        }
        self.ensure_image().await?;
        let id = self.create(launch).await?;
        self.start(&id).await?;
        tracing::info!(container = %id, name = %launch.instance_name, "container started");
        Ok(launched(id))
    }

    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError> {
        let containers: HashMap<String, ContainerSummary> = self
            .list_managed()
            .await?
            .into_iter()
            .filter_map(|c| Some((c.id.clone()?, c)))
            .collect();
        let mut seen = Vec::with_capacity(instances.len());
        for i in instances {
            use ContainerSummaryStateEnum as S;
            let observed = match containers.get(&i.provider_id) {
                None => Observed::Ended {
                    outcome: "vanished",
                    reason: Some(format!("container {} no longer exists", i.provider_id)),
                    gone: true,
                },
                Some(c) => match c.state {
                    Some(S::EXITED | S::DEAD) => {
                        self.exited(&i.provider_id, c.status.as_deref()).await
                    }
                    Some(S::REMOVING) => Observed::Ended {
                        outcome: "vanished",
                        reason: Some(format!("container {} is being removed", i.provider_id)),
                        gone: false,
                    },
                    // created, running, restarting, paused, stopping: the run is not over.
                    _ => Observed::Running,
                },
            };
            seen.push(observed);
        }
        Ok(seen)
    }

    async fn terminate(
        &self,
        instance: &Instance,
        ending: Ending,
    ) -> Result<Termination, BackendError> {
        let id = instance.provider_id.as_str();
        let not_yet = Termination {
            gone: false,
            billed_millis: None,
        };
        if ending == Ending::Finished {
            // The worker is exiting on its own: give it `finish_grace` before stopping it.
            let limit = self.settings.call_timeout;
            let running = match within(
                "inspecting a container",
                limit,
                self.docker
                    .inspect_container(id, None::<InspectContainerOptions>),
            )
            .await?
            {
                Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
                Err(e) if status_of(&e) == Some(404) => false,
                Err(e) => return Err(backend_error("inspecting a container", e)),
            };
            let waited = {
                let mut asked = self
                    .finish_asked
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                asked
                    .entry(id.to_owned())
                    .or_insert_with(Instant::now)
                    .elapsed()
            };
            if running && waited < self.settings.finish_grace {
                return Ok(not_yet);
            }
        }
        self.stop(id).await?;
        let gone = self.remove(id).await?;
        if gone {
            self.finish_asked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(id);
            tracing::info!(container = %id, lora = %instance.lora_id, "container removed");
        }
        Ok(Termination {
            gone,
            billed_millis: None,
        })
    }

    async fn list_instances(
        &self,
        prefix: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        Ok(Some(
            self.list_managed()
                .await?
                .into_iter()
                .filter_map(|c| {
                    let name = summary_name(&c)?.to_owned();
                    Some((c.id?, name))
                })
                .filter(|(_, name)| name.starts_with(prefix))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_the_outcome_table() {
        assert_eq!(exit_outcome(0), "trained");
        assert_eq!(exit_outcome(3), "non_finite_loss");
        assert_eq!(exit_outcome(13), "control_plane_unreachable");
        assert_eq!(exit_outcome(137), "killed", "SIGKILL");
        assert_eq!(exit_outcome(77), "internal");
    }
}
