//! A contract fake of the Docker Engine API, written from `shared/research/api-contracts.md` §5
//! and Docker's API reference rather than from our client, for tests: one axum server on a free
//! loopback port ([`FakeDocker::start`], optionally also on a unix socket) answering the
//! endpoints bollard calls, with or without the `/v1.NN` version prefix (bollard 0.21.1 builds
//! its URLs without it; newer clients send it).
//!
//! Containers really run: an image is a [`DockerImage`], its default command (an [`ImageSpec`])
//! and the programs on its `PATH`; a started container runs its `Cmd` (the first word looked up
//! among the image's programs) or the image's default, in its own process group, with a cleared
//! environment plus the image's and the container's `Env`, output in `logs_dir`. `stop` sends
//! SIGTERM and SIGKILL after its timeout, `kill` and a forced remove SIGKILL; dropping the fake
//! SIGKILLs every group it started and reaps them.
//!
//! What a real engine decides from the host (GPUs, pulls, out-of-memory kills, failures) is set
//! in [`FakeDockerConfig`] or steered through the handle.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::ImageSpec;
use crate::process::{self, Stdout};

/// An image the fake can run: `default` is its `CMD` (with its `ENV`), `programs` what is on its
/// `PATH` (`"loraforge"` → the path of a local binary or script).
#[derive(Debug, Clone, Default)]
pub struct DockerImage {
    pub default: ImageSpec,
    pub programs: HashMap<String, PathBuf>,
}

impl DockerImage {
    pub fn new(default: ImageSpec) -> Self {
        Self {
            default,
            programs: HashMap::new(),
        }
    }

    /// `name` on the image's `PATH` runs `path`.
    pub fn with_program(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.programs.insert(name.into(), path.into());
        self
    }
}

#[derive(Debug, Clone)]
pub struct FakeDockerConfig {
    /// Default 127.0.0.1:0 (a free port).
    pub bind: SocketAddr,
    /// Also serve on this unix socket (created; removed when the fake is dropped).
    pub unix_socket: Option<PathBuf>,
    /// Images present on the host, by reference (`repo:tag`; a reference without a tag means
    /// `:latest`).
    pub images: HashMap<String, DockerImage>,
    /// Images a pull (`POST /images/create`) can fetch; a pulled image becomes present.
    pub registry: HashMap<String, DockerImage>,
    /// Every pull fails with this message (404, as Docker answers a pull it cannot make).
    pub pull_error: Option<String>,
    /// How long a pull takes (default 0).
    pub pull_delay: Duration,
    /// GPUs on the host: a container asking for more (or for any, when 0) fails to start with
    /// Docker's "could not select device driver" error.
    pub gpus: u32,
    /// Requests answering 500 at random, with this probability (0.0–1.0) from `seed`.
    pub fail_rate: f64,
    /// Container creates that make their container and then answer 500 (the answer lost on
    /// its way back), with this probability, drawn after `fail_rate`.
    pub lose_rate: f64,
    pub seed: u64,
    /// Where `<container id>.log` goes; `None` → a temporary directory owned by the fake.
    pub logs_dir: Option<PathBuf>,
}

impl Default for FakeDockerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            unix_socket: None,
            images: HashMap::new(),
            registry: HashMap::new(),
            pull_error: None,
            pull_delay: Duration::ZERO,
            gpus: 0,
            fail_rate: 0.0,
            lose_rate: 0.0,
            seed: 1,
            logs_dir: None,
        }
    }
}

impl FakeDockerConfig {
    pub fn with_image(mut self, reference: &str, image: DockerImage) -> Self {
        self.images.insert(normalize_reference(reference), image);
        self
    }

    pub fn with_registry_image(mut self, reference: &str, image: DockerImage) -> Self {
        self.registry.insert(normalize_reference(reference), image);
        self
    }

    pub fn with_gpus(mut self, gpus: u32) -> Self {
        self.gpus = gpus;
        self
    }
}

/// `repo` → `repo:latest`; a reference with a tag or digest is kept.
pub fn normalize_reference(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') || last.contains('@') {
        reference.to_owned()
    } else {
        format!("{reference}:latest")
    }
}

/// A container's state, as `State.Status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    Running,
    Exited,
}

impl ContainerStatus {
    pub fn as_wire(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Exited => "exited",
        }
    }
}

/// `HostConfig.DeviceRequests[]` as received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceRequestSeen {
    pub driver: Option<String>,
    pub count: Option<i64>,
    pub device_ids: Vec<String>,
    pub capabilities: Vec<Vec<String>>,
}

/// A container as the fake keeps it (removed ones too, flagged).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSnapshot {
    pub id: String,
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub labels: HashMap<String, String>,
    pub device_requests: Vec<DeviceRequestSeen>,
    /// `HostConfig.Memory`, bytes.
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub network_mode: Option<String>,
    pub status: ContainerStatus,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub removed: bool,
    pub created_at: DateTime<Utc>,
    pub pid: Option<i32>,
    pub log_path: PathBuf,
}

/// One request the fake took: method, path without the version prefix, status (0 while it is
/// still being answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerCall {
    pub method: String,
    /// The API version the path named (`1.53` from `/v1.53/…`), `None` without a prefix.
    pub version: Option<String>,
    pub path: String,
    pub query: String,
    pub status: u16,
}

pub(crate) struct ContainerRecord {
    pub snapshot: ContainerSnapshot,
    pub seq: u64,
    pub image: DockerImage,
    /// (registry key, pid) of the running process.
    pub process: Option<(u64, i32)>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Waiters for the process's end (`/wait`, `/stop`).
    pub exited: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
pub(crate) struct DockerState {
    pub images: HashMap<String, DockerImage>,
    pub containers: HashMap<String, ContainerRecord>,
    pub next_seq: u64,
    pub procs: HashMap<u64, i32>,
    pub next_proc: u64,
    pub calls: Vec<DockerCall>,
    /// The next `n` requests answer this status.
    pub inject: Option<(u32, u16)>,
    /// The next `n` creates make the container and then answer 500 (an answer lost in transit).
    pub lose_creates: u32,
    /// Creates whose answer was lost so far.
    pub lost_answers: u32,
    pub rng: u64,
    pub shutting_down: bool,
}

pub(crate) struct DockerShared {
    pub config: FakeDockerConfig,
    pub logs_dir: PathBuf,
    state: Mutex<DockerState>,
}

impl DockerShared {
    pub fn lock(&self) -> MutexGuard<'_, DockerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl DockerState {
    /// The container `key` names: its full id, a unique id prefix, or its name (with or without
    /// the leading `/`), as Docker resolves them. Removed containers are not found.
    pub fn find(&self, key: &str) -> Option<String> {
        let key = key.strip_prefix('/').unwrap_or(key);
        let live = || self.containers.values().filter(|c| !c.snapshot.removed);
        if let Some(c) = live().find(|c| c.snapshot.id == key || c.snapshot.name == key) {
            return Some(c.snapshot.id.clone());
        }
        let mut by_prefix = live().filter(|c| !key.is_empty() && c.snapshot.id.starts_with(key));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(c), None) => Some(c.snapshot.id.clone()),
            _ => None,
        }
    }

    /// A xorshift draw in [0, 1).
    pub fn draw(&mut self) -> f64 {
        let mut x = self.rng.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// 64 lowercase hex digits, like a container id.
pub(crate) fn container_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Starts the container's command. `Err` is Docker's message for a start that failed; the
/// container is then `exited` with 127, as Docker leaves one whose program is missing.
pub(crate) fn start_process(
    shared: &Arc<DockerShared>,
    st: &mut DockerState,
    id: &str,
) -> Result<(), String> {
    if st.shutting_down {
        return Err("the fake is shutting down".into());
    }
    let key = st.next_proc + 1;
    let Some(c) = st.containers.get_mut(id) else {
        return Err(format!("No such container: {id}"));
    };
    let spec = match c.snapshot.cmd.split_first() {
        None => c.image.default.clone(),
        Some((first, rest)) => {
            let program = c
                .image
                .programs
                .get(first)
                .cloned()
                .or_else(|| first.starts_with('/').then(|| PathBuf::from(first)));
            let Some(program) = program else {
                c.snapshot.status = ContainerStatus::Exited;
                c.snapshot.exit_code = Some(127);
                return Err(format!(
                    "failed to create task for container: failed to create shim task: OCI runtime create failed: exec: \"{first}\": executable file not found in $PATH"
                ));
            };
            ImageSpec {
                program: Some(program),
                args: rest.to_vec(),
                env: c.image.default.env.clone(),
            }
        }
    };
    if spec.program.is_none() {
        // An image with no process: it runs until stopped (no task, nothing to reap).
        c.snapshot.status = ContainerStatus::Running;
        c.started_at = Some(Utc::now());
        return Ok(());
    }
    let log = shared.logs_dir.join(format!("{id}.log"));
    match process::spawn(&spec, &c.snapshot.env, &log, Stdout::Log) {
        Ok(child) => {
            let pid = child.id().map_or(0, |p| p as i32);
            c.process = Some((key, pid));
            c.snapshot.pid = Some(pid);
            c.snapshot.status = ContainerStatus::Running;
            c.snapshot.exit_code = None;
            c.started_at = Some(Utc::now());
            c.exited.send_replace(false);
            st.next_proc = key;
            st.procs.insert(key, pid);
            tokio::spawn(supervise(Arc::clone(shared), id.to_owned(), key, child));
            Ok(())
        }
        Err(error) => {
            c.snapshot.status = ContainerStatus::Exited;
            c.snapshot.exit_code = Some(127);
            Err(format!("OCI runtime create failed: {error}"))
        }
    }
}

/// Waits for a container's process; then it is `exited` with the process's status.
async fn supervise(
    shared: Arc<DockerShared>,
    id: String,
    key: u64,
    mut child: tokio::process::Child,
) {
    let status = child.wait().await;
    let mut st = shared.lock();
    st.procs.remove(&key);
    let Some(c) = st.containers.get_mut(&id) else {
        return;
    };
    if c.process.map(|(k, _)| k) != Some(key) {
        return;
    }
    c.process = None;
    c.snapshot.pid = None;
    c.snapshot.status = ContainerStatus::Exited;
    c.finished_at = Some(Utc::now());
    if c.snapshot.exit_code.is_none() {
        c.snapshot.exit_code = Some(status.map_or(-1, |s| process::exit_code(&s)));
    }
    c.exited.send_replace(true);
}

/// A running fake. Dropping it stops the server and kills every process it started.
pub struct FakeDocker {
    shared: Arc<DockerShared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    _temp_logs: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for FakeDocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDocker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeDocker {
    /// Binds and serves until dropped. Panics when it cannot bind (test helper); see
    /// [`FakeDocker::try_start`].
    pub async fn start(config: FakeDockerConfig) -> Self {
        Self::try_start(config)
            .await
            .expect("fake Docker could not start")
    }

    pub async fn try_start(config: FakeDockerConfig) -> io::Result<Self> {
        let (logs_dir, temp_logs) =
            crate::folder_or_temp(config.logs_dir.as_deref(), "fake-docker-")?;
        let listener = tokio::net::TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let unix = match &config.unix_socket {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                Some(tokio::net::UnixListener::bind(path)?)
            }
            None => None,
        };
        let state = DockerState {
            images: config.images.clone(),
            rng: config.seed,
            ..DockerState::default()
        };
        let shared = Arc::new(DockerShared {
            config,
            logs_dir,
            state: Mutex::new(state),
        });
        let (shutdown, stopped) = tokio::sync::watch::channel(false);
        let app = crate::docker_server::router(Arc::clone(&shared));
        let mut servers = Vec::new();
        let mut stop = stopped.clone();
        let tcp_app = app.clone();
        servers.push(tokio::spawn(async move {
            let serve = axum::serve(listener, tcp_app).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "fake Docker server stopped");
            }
        }));
        if let Some(unix) = unix {
            let mut stop = stopped;
            servers.push(tokio::spawn(async move {
                let serve = axum::serve(unix, app).with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
                if let Err(error) = serve.await {
                    tracing::warn!(%error, "fake Docker unix server stopped");
                }
            }));
        }
        Ok(Self {
            shared,
            addr,
            shutdown: Some(shutdown),
            servers,
            _temp_logs: temp_logs,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `tcp://127.0.0.1:PORT`, as `DOCKER_HOST` would say it.
    pub fn host(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    pub fn logs_dir(&self) -> &Path {
        &self.shared.logs_dir
    }

    /// Every container ever created (removed ones included), oldest first.
    pub fn containers(&self) -> Vec<ContainerSnapshot> {
        let st = self.shared.lock();
        let mut all: Vec<_> = st.containers.values().collect();
        all.sort_by_key(|c| c.seq);
        all.into_iter().map(|c| c.snapshot.clone()).collect()
    }

    /// The container `key` (id, id prefix or name) names, removed ones included.
    pub fn container(&self, key: &str) -> Option<ContainerSnapshot> {
        let st = self.shared.lock();
        st.containers
            .values()
            .filter(|c| c.snapshot.id == key || c.snapshot.name == key)
            .max_by_key(|c| c.seq)
            .map(|c| c.snapshot.clone())
    }

    /// Requests answered, in order.
    pub fn calls(&self) -> Vec<DockerCall> {
        self.shared.lock().calls.clone()
    }

    /// The next `count` requests answer `status` with a Docker error body.
    pub fn inject_status(&self, count: u32, status: u16) {
        self.shared.lock().inject = Some((count, status));
    }

    /// The next `count` creates make their container but answer 500, as when the answer is lost.
    pub fn lose_create_answers(&self, count: u32) {
        self.shared.lock().lose_creates = count;
    }

    /// Container creates carried out whose answer was lost (answered 500).
    pub fn lost_answers(&self) -> u32 {
        self.shared.lock().lost_answers
    }

    /// The kernel's OOM killer ends the container's process: SIGKILL, `OOMKilled: true`, exit 137.
    /// `false` unless it is running a process.
    pub fn oom_kill(&self, key: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(id) = st.find(key) else { return false };
        let c = st.containers.get_mut(&id).expect("found above");
        let Some((_, pid)) = c.process else {
            return false;
        };
        c.snapshot.oom_killed = true;
        c.snapshot.exit_code = Some(137);
        process::signal_group(pid, libc::SIGKILL);
        true
    }

    /// Processes started by the fake that have not been reaped yet.
    pub fn live_processes(&self) -> usize {
        self.shared.lock().procs.len()
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        let pids: Vec<i32> = {
            let mut st = self.shared.lock();
            st.shutting_down = true;
            st.procs.values().copied().collect()
        };
        for &pid in &pids {
            process::signal_group(pid, libc::SIGKILL);
        }
        for &pid in &pids {
            process::reap_blocking(pid, Duration::from_secs(2));
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        for server in &self.servers {
            server.abort();
        }
        if let Some(path) = &self.shared.config.unix_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_latest_unless_tagged() {
        assert_eq!(normalize_reference("worker"), "worker:latest");
        assert_eq!(
            normalize_reference("ghcr.io:443/acme/worker"),
            "ghcr.io:443/acme/worker:latest"
        );
        assert_eq!(
            normalize_reference("ghcr.io/acme/worker:0.1"),
            "ghcr.io/acme/worker:0.1"
        );
        assert_eq!(normalize_reference("w@sha256:ab"), "w@sha256:ab");
    }

    #[test]
    fn draws_are_in_range_and_repeatable() {
        let mut a = DockerState {
            rng: 7,
            ..DockerState::default()
        };
        let mut b = DockerState {
            rng: 7,
            ..DockerState::default()
        };
        for _ in 0..100 {
            let x = a.draw();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x.to_bits(), b.draw().to_bits());
        }
    }
}
