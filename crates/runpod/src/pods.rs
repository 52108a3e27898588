//! The `runpod` backend: one on-demand GPU pod per training attempt (or sample batch attempt),
//! running the worker image (`docker/worker.Dockerfile`) with the worker's environment; the pod
//! calls back to the control plane's public URL over the worker protocol.
//!
//! - Launch: the GPU types are tried in the configured order; "no longer any instances
//!   available" moves on to the next, and when every type is out the engine waits in the queue
//!   (`BackendError::NoCapacity`). A create is never repeated blindly (RunPod has no idempotency
//!   key): when a launch is retried, a pod already carrying the attempt's name (left by a create
//!   whose answer was lost) is taken instead of creating another.
//! - Observe: one `myself { pods }` listing answers for every run at once.
//! - Terminate: `podTerminate` (idempotent), then the pod is looked up: gone when RunPod no
//!   longer knows it or reports it TERMINATED. The engine bills from the run's creation to that
//!   confirmation at the pod's `costPerHr`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use loraforge_domain::MicroUsd;
use loraforge_engine::{
    BackendError, Ending, Instance, Launch, Launched, Observed, Scope, Termination, TrainingBackend,
};

use crate::{CloudType, DeployPod, GraphqlClient, Pod, PodStatus, RunpodError};

/// How pods are made.
#[derive(Debug, Clone)]
pub struct PodsSettings {
    /// The backend's name in the database. Default "runpod".
    pub name: String,
    /// The worker image, e.g. `ghcr.io/acme/loraforge-worker:0.1.0`.
    pub image: String,
    /// GPU types to try, in order (RunPod's ids, e.g. "NVIDIA RTX A6000").
    pub gpu_types: Vec<String>,
    pub cloud_type: CloudType,
    pub container_disk_gb: Option<u32>,
    pub volume_gb: Option<u32>,
    pub volume_mount_path: Option<String>,
    /// A network volume holding the Hugging Face cache (base weights downloaded once).
    pub network_volume_id: Option<String>,
    /// Pods at once across every replica.
    pub max_pods: usize,
    /// Extra environment for every pod (e.g. `HF_TOKEN`), after the worker's own variables.
    pub env: Vec<(String, String)>,
    /// How often the engine lists the pods. Default 15 s.
    pub observe_every: Duration,
}

impl PodsSettings {
    pub fn new(image: impl Into<String>, gpu_types: Vec<String>) -> Self {
        Self {
            name: "runpod".to_owned(),
            image: image.into(),
            gpu_types,
            cloud_type: CloudType::All,
            container_disk_gb: Some(40),
            volume_gb: None,
            volume_mount_path: None,
            network_volume_id: None,
            max_pods: 10,
            env: Vec::new(),
            observe_every: Duration::from_secs(15),
        }
    }
}

#[derive(Debug)]
pub struct PodsBackend {
    client: GraphqlClient,
    settings: PodsSettings,
}

impl PodsBackend {
    pub fn new(client: GraphqlClient, settings: PodsSettings) -> Self {
        Self { client, settings }
    }

    fn deploy(&self, launch: &Launch, gpu: &str) -> DeployPod {
        let mut d = DeployPod::new(
            launch.instance_name.clone(),
            self.settings.image.clone(),
            gpu.to_owned(),
        );
        d.cloud_type = self.settings.cloud_type;
        d.container_disk_in_gb = self.settings.container_disk_gb;
        d.volume_in_gb = self.settings.volume_gb;
        d.volume_mount_path = self.settings.volume_mount_path.clone();
        d.network_volume_id = self.settings.network_volume_id.clone();
        d.env = launch.worker_env();
        d.env.extend(self.settings.env.iter().cloned());
        d
    }

    /// What a pod's price and GPU make of a launch.
    async fn launched(&self, pod: Pod, gpu: Option<&str>) -> Launched {
        let mut price = pod.cost_per_hour_micros;
        if price.is_none() {
            // Not every answer carries the price; the pod's own record does.
            price = self
                .client
                .pod(&pod.id)
                .await
                .ok()
                .flatten()
                .and_then(|p| p.cost_per_hour_micros);
        }
        Launched {
            provider_id: pod.id,
            gpu_type: gpu.map(str::to_owned).or(pod.gpu_type),
            price_per_hour: price.map(MicroUsd),
        }
    }
}

/// A RunPod error as the engine decides on it.
pub(crate) fn backend_error(what: &str, e: RunpodError) -> BackendError {
    let message = format!("RunPod {what}: {e}");
    match e {
        RunpodError::Unauthorized => {
            BackendError::Permanent(format!("{message}; check LORAFORGE_RUNPOD_API_KEY"))
        }
        RunpodError::NoCapacity(_) => BackendError::NoCapacity(message),
        e if e.is_retryable() => BackendError::Transient(message),
        RunpodError::Decode(_) => BackendError::Transient(message),
        _ => BackendError::Permanent(message),
    }
}

#[async_trait]
impl TrainingBackend for PodsBackend {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn max_runs(&self) -> usize {
        self.settings.max_pods
    }

    fn scope(&self) -> Scope {
        Scope::Shared
    }

    /// A pod runs the worker image, whose `loraforge worker` renders a batch when the pod's
    /// environment names one (`LORAFORGE_SAMPLE_BATCH`, from `Launch::worker_env`). The pod is
    /// named `domain::run::sample_instance_name`, which the orphan sweep reads back; observe and
    /// terminate go by pod id, whatever the pod runs.
    fn runs_samples(&self) -> bool {
        true
    }

    fn observe_every(&self) -> Duration {
        self.settings.observe_every
    }

    async fn launch(&self, launch: &Launch) -> Result<Launched, BackendError> {
        // A retried create whose first answer was lost may have made the pod: take it rather
        // than make two. (Only on a retry: a listing per launch made starting 1,000 runs
        // quadratic, bench/runs_watch.sh.)
        if launch.retry {
            let pods = self
                .client
                .list_pods()
                .await
                .map_err(|e| backend_error("listing pods", e))?;
            if let Some(pod) = pods.into_iter().find(|p| {
                p.name == launch.instance_name && !matches!(p.desired_status, PodStatus::Terminated)
            }) {
                tracing::warn!(pod = %pod.id, name = %launch.instance_name, "a pod of this attempt exists already; using it");
                return Ok(self.launched(pod, None).await);
            }
        }
        let mut out_of_capacity = Vec::new();
        for gpu in &self.settings.gpu_types {
            match self.client.deploy_pod(&self.deploy(launch, gpu)).await {
                Ok(pod) => {
                    tracing::info!(pod = %pod.id, gpu = %gpu, name = %launch.instance_name, "pod created");
                    return Ok(self.launched(pod, Some(gpu)).await);
                }
                Err(e) if e.is_capacity() => {
                    tracing::info!(gpu = %gpu, "RunPod has no capacity for this GPU type; trying the next");
                    out_of_capacity.push(gpu.clone());
                }
                Err(e) => return Err(backend_error("creating a pod", e)),
            }
        }
        Err(BackendError::NoCapacity(format!(
            "RunPod has no {} available",
            out_of_capacity.join(", ")
        )))
    }

    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError> {
        let pods: HashMap<String, Pod> = self
            .client
            .list_pods()
            .await
            .map_err(|e| backend_error("listing pods", e))?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        Ok(instances
            .iter()
            .map(
                |i| match pods.get(&i.provider_id).map(|p| &p.desired_status) {
                    Some(PodStatus::Running) => Observed::Running,
                    Some(PodStatus::Exited) => Observed::Ended {
                        outcome: "vanished",
                        reason: Some(format!("pod {} exited", i.provider_id)),
                        gone: false,
                    },
                    Some(PodStatus::Other(status)) => Observed::Ended {
                        outcome: "vanished",
                        reason: Some(format!("pod {} is {status}", i.provider_id)),
                        gone: false,
                    },
                    Some(PodStatus::Terminated) | None => Observed::Ended {
                        outcome: "vanished",
                        reason: Some(format!("pod {} no longer exists", i.provider_id)),
                        gone: true,
                    },
                },
            )
            .collect())
    }

    async fn list_instances(
        &self,
        prefix: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        let pods = self
            .client
            .list_pods()
            .await
            .map_err(|e| backend_error("listing pods", e))?;
        Ok(Some(
            pods.into_iter()
                .filter(|p| p.name.starts_with(prefix) && p.desired_status != PodStatus::Terminated)
                .map(|p| (p.id, p.name))
                .collect(),
        ))
    }

    async fn terminate(
        &self,
        instance: &Instance,
        _ending: Ending,
    ) -> Result<Termination, BackendError> {
        self.client
            .terminate_pod(&instance.provider_id)
            .await
            .map_err(|e| backend_error("terminating a pod", e))?;
        let pod = self
            .client
            .pod(&instance.provider_id)
            .await
            .map_err(|e| backend_error("reading a pod", e))?;
        let gone = pod.is_none_or(|p| p.desired_status == PodStatus::Terminated);
        if gone {
            tracing::info!(pod = %instance.provider_id, lora = %instance.lora_id, "pod terminated");
        }
        Ok(Termination {
            gone,
            billed_millis: None,
        })
    }
}
