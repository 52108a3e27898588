//! Contract fakes of RunPod's pod (GraphQL) and Serverless APIs (and of the Docker Engine API:
//! [`FakeDocker`], module [`docker`]), written from
//! `shared/research/api-contracts.md` §1a and §2 rather than from our client, for tests and
//! benchmarks. One axum server on a free local port ([`FakeRunpod::start`]) answers both APIs,
//! and the returned handle inspects and steers it: capacity, injected 429/5xx, hosts dying,
//! workers dying, and the log of calls received.
//!
//! Pods and jobs really run: an image name maps to an [`ImageSpec`] (program, args, env), and a
//! deploy or a job starts that program in its own process group, with a cleared environment plus
//! the image's and the pod's or job's variables, its output in `logs_dir`. Terminating a pod
//! sends SIGTERM to the group and SIGKILL after `kill_grace`; dropping the fake SIGKILLs every
//! group it started and reaps them, so no process outlives a test. Images without a program make
//! pods that just stay running, with no task or timer each (1,000 of them are cheap).
//!
//! Facts the contracts mark [U] are settings of [`FakeConfig`].
//!
//! [`FakeReplicate`] (module [`replicate`]) is the same kind of fake for Replicate's trainings
//! API (§3): trainings run a configured command (our Cog model's `cog/train.py`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub mod aitoolkit;
mod config;
pub mod docker;
mod docker_list;
mod docker_server;
mod gql;
mod jobs;
mod pods;
mod process;
pub mod replicate;
mod replicate_config;
mod replicate_run;
mod replicate_server;
mod server;
mod state;
pub mod trainer;

pub use config::{
    EndpointSpec, FakeConfig, GpuType, ImageSpec, TerminateUnknown, TerminatedPods, parse_price,
};
pub use docker::{
    ContainerSnapshot, ContainerStatus, DeviceRequestSeen, DockerCall, DockerImage, FakeDocker,
    FakeDockerConfig,
};
pub use docker_server::FAKE_API_VERSION;
pub use pods::NO_CAPACITY_MESSAGE;
pub use replicate::{
    Delivery, FakeReplicate, FakeTrainingStatus, Faults, ReplicateConfig, TrainingCommand,
};
pub use replicate_run::sign_webhook;
pub use state::{Call, CallOp, RequestSeen};

use state::{Injection, Shared};

/// A pod as the fake keeps it (terminated and vanished ones included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakePodStatus {
    Running,
    /// Its process ended (or the host died with `KillPod::Exited`).
    Exited,
    /// `podTerminate` was called.
    Terminated,
    /// The host died with `KillPod::Removed`: RunPod no longer knows the pod.
    Vanished,
}

/// What `kill_pod` leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPod {
    /// The pod reports EXITED.
    Exited,
    /// The pod disappears: `pod` answers null and `myself.pods` omits it.
    Removed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodSnapshot {
    pub id: String,
    pub name: String,
    pub image_name: String,
    pub gpu_type: String,
    pub gpu_count: u32,
    /// `ALL`, `SECURE` or `COMMUNITY`.
    pub cloud_type: String,
    pub status: FakePodStatus,
    pub env: Vec<(String, String)>,
    pub created_at: DateTime<Utc>,
    pub terminated_at: Option<DateTime<Utc>>,
    pub process_alive: bool,
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub log_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeJobState {
    InQueue,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

impl FakeJobState {
    pub fn as_wire(self) -> &'static str {
        match self {
            Self::InQueue => "IN_QUEUE",
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::TimedOut => "TIMED_OUT",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobSnapshot {
    pub id: String,
    pub endpoint: String,
    pub state: FakeJobState,
    pub input: Value,
    pub created_at: DateTime<Utc>,
    pub delay_time_ms: Option<u64>,
    pub execution_time_ms: Option<u64>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub process_alive: bool,
    pub pid: Option<i32>,
    pub log_path: PathBuf,
}

/// A fake's working folder: `configured` (created), else a new temporary one (named with
/// `prefix`) that lives as long as the returned guard.
pub(crate) fn folder_or_temp(
    configured: Option<&Path>,
    prefix: &str,
) -> io::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match configured {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Ok((dir.to_owned(), None))
        }
        None => {
            let temp = tempfile::Builder::new().prefix(prefix).tempdir()?;
            Ok((temp.path().to_owned(), Some(temp)))
        }
    }
}

/// A running fake. Dropping it stops the server and kills every process it started.
pub struct FakeRunpod {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _temp_logs: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for FakeRunpod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRunpod")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeRunpod {
    /// Binds `config.bind` and serves until dropped. Panics when it cannot bind (test helper);
    /// see [`FakeRunpod::try_start`].
    pub async fn start(config: FakeConfig) -> Self {
        Self::try_start(config)
            .await
            .expect("fake RunPod could not start")
    }

    pub async fn try_start(config: FakeConfig) -> io::Result<Self> {
        let (logs_dir, temp_logs) =
            crate::folder_or_temp(config.logs_dir.as_deref(), "fake-runpod-")?;
        let listener = tokio::net::TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(config, logs_dir);
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = server::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "fake RunPod server stopped");
            }
        });
        Ok(Self {
            shared,
            addr,
            shutdown: Some(shutdown),
            server,
            _temp_logs: temp_logs,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/graphql`
    pub fn graphql_url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    /// `http://127.0.0.1:PORT/v2` (endpoint ids go after it, as under `https://api.runpod.ai/v2`).
    pub fn serverless_base_url(&self) -> String {
        format!("http://{}/v2", self.addr)
    }

    pub fn logs_dir(&self) -> &Path {
        &self.shared.logs_dir
    }

    /// Free GPUs of `gpu_type` from now on (adds the type, priced 0, if it was not configured).
    pub fn set_capacity(&self, gpu_type: &str, available: u32) {
        let mut st = self.shared.lock();
        st.gpus
            .entry(gpu_type.to_owned())
            .or_insert_with(|| GpuType {
                id: gpu_type.to_owned(),
                available: 0,
                cost_per_hr_micros: 0,
            })
            .available = available;
    }

    /// The next `count` requests to either API answer HTTP `status` (with `Retry-After:
    /// <seconds>` when given) without reaching the API (`u32::MAX`: the provider is hard down).
    /// They are in [`Self::requests`], not in [`Self::calls`].
    pub fn inject_status(&self, count: u32, status: u16, retry_after: Option<Duration>) {
        self.shared.lock().inject = Some(Injection {
            remaining: count,
            status,
            retry_after,
        });
    }

    /// The host under a pod dies: its process group gets SIGKILL and the pod reports EXITED or
    /// vanishes. `false` when the pod is unknown or already terminated.
    pub fn kill_pod(&self, id: &str, how: KillPod) -> bool {
        pods::kill(&self.shared, id, how)
    }

    /// The worker running a job dies: SIGKILL, and the job is FAILED with a JSON-encoded error
    /// string. `false` unless the job is IN_PROGRESS.
    pub fn kill_job(&self, id: &str) -> bool {
        jobs::kill(&self.shared, id)
    }

    /// Every pod ever deployed, oldest first.
    pub fn pods(&self) -> Vec<PodSnapshot> {
        let st = self.shared.lock();
        let mut pods: Vec<_> = st.pods.values().collect();
        pods.sort_by_key(|p| p.seq);
        pods.into_iter().map(|p| p.snapshot(&self.shared)).collect()
    }

    pub fn pod(&self, id: &str) -> Option<PodSnapshot> {
        self.shared
            .lock()
            .pods
            .get(id)
            .map(|p| p.snapshot(&self.shared))
    }

    /// Every job ever submitted, oldest first.
    pub fn jobs(&self) -> Vec<JobSnapshot> {
        let st = self.shared.lock();
        let mut jobs: Vec<_> = st.jobs.values().collect();
        jobs.sort_by_key(|j| j.created);
        jobs.into_iter().map(|j| j.snapshot(&self.shared)).collect()
    }

    pub fn job(&self, id: &str) -> Option<JobSnapshot> {
        self.shared
            .lock()
            .jobs
            .get(id)
            .map(|j| j.snapshot(&self.shared))
    }

    /// Deploys, terminates, runs and cancels received, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// The calls from the `from`-th on (0-based), in order: a reader that remembers how many it
    /// has seen copies only the new ones.
    pub fn calls_since(&self, from: usize) -> Vec<Call> {
        let st = self.shared.lock();
        st.calls
            .get(from..)
            .map(<[Call]>::to_vec)
            .unwrap_or_default()
    }

    /// Every request received, in order, with what it was answered (refused ones included).
    pub fn requests(&self) -> Vec<RequestSeen> {
        self.shared.lock().requests.clone()
    }

    /// Processes started by the fake that have not been reaped yet.
    pub fn live_processes(&self) -> usize {
        self.shared.lock().procs.len()
    }

    /// Their pids (each also the id of its process group).
    pub fn live_pids(&self) -> Vec<i32> {
        self.shared.lock().procs.values().copied().collect()
    }
}

impl Drop for FakeRunpod {
    fn drop(&mut self) {
        let pids: Vec<i32> = {
            let mut st = self.shared.lock();
            st.shutting_down = true;
            st.procs.values().copied().collect()
        };
        for &pid in &pids {
            process::signal_group(pid, libc::SIGKILL);
        }
        // Reap here rather than leave it to tokio: the runtime may not run again before the
        // test checks that nothing is left (or may be shutting down).
        for &pid in &pids {
            process::reap_blocking(pid, Duration::from_secs(2));
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}
