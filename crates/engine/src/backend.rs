//! The seam between the engine and the places training runs: a [`TrainingBackend`] starts a run
//! for a [`JobSpec`], says how it is doing, and kills it. Backends are an open set and several
//! are live at once (`Arc<dyn TrainingBackend>`), so the engine only ever speaks this trait.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use loraforge_domain::{LoraId, Progress, TrainingParams};

/// A backend's handle on one run; unique per backend. Stored in `training_jobs.run_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything a worker needs to run one attempt of one job. Plain data: it is written to disk
/// (local backend) or sent over the wire (remote backends) as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub lora_id: LoraId,
    /// 1 on the first run, 2 after one requeue, …
    pub attempt: u32,
    pub params: TrainingParams,
    /// The dataset's images in order, by storage key, with their captions.
    pub images: Vec<SpecImage>,
    /// The worker's credential for its callbacks to the control plane (`docs/worker-protocol.md`),
    /// issued per attempt by the engine's [`WorkerTokens`]; `None` when it has none.
    #[serde(skip_serializing)]
    pub worker_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecImage {
    pub storage_key: String,
    pub caption: Option<String>,
}

/// Issues the per-attempt credential a worker presents to the control plane. The control plane
/// implements it (a signed token naming the job, the attempt and this engine); the engine only
/// hands the result to the backend.
pub trait WorkerTokens: Send + Sync + fmt::Debug + 'static {
    fn issue(&self, lora: LoraId, attempt: u32, worker_id: &str) -> Result<String, String>;
}

/// What a backend knows about a run right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// The run ended. `code` is the exit code (`None`: killed by a signal); `reason` is the
    /// worker's own account of an error, when it gave one (the trainer's `error` line).
    Exited {
        code: Option<i32>,
        reason: Option<String>,
        /// The worker said the failure may pass (the trainer's `"retryable": true`, e.g. a base
        /// model that could not be fetched for now).
        retryable: bool,
    },
    /// The backend has no such run (it was restarted, or the run was never its own).
    Unknown,
}

/// Progress a run reported, collected by the backend until the engine's next tick.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub run_id: RunId,
    pub lora_id: LoraId,
    pub progress: Progress,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No free slot right now; try again later.
    #[error("the backend has no free slot")]
    NoCapacity,
    /// The run could not be started for a reason that may pass (resource busy, I/O hiccup,
    /// a provider's 5xx or 429).
    #[error("the run could not start for now: {0}")]
    Transient(String),
    /// The run can never start as configured (missing program, bad spec, permission denied).
    #[error("could not start the run: {0}")]
    Permanent(String),
    #[error("backend I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl BackendError {
    /// Worth trying again unchanged, after a pause.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::NoCapacity | BackendError::Transient(_) => true,
            BackendError::Permanent(_) => false,
            BackendError::Io(e) => io_is_retryable(e),
        }
    }
}

/// I/O errors that say "not now" rather than "never".
pub(crate) fn io_is_retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::Interrupted | K::WouldBlock | K::TimedOut | K::ResourceBusy | K::ExecutableFileBusy | K::OutOfMemory
    )
}

#[async_trait]
pub trait TrainingBackend: Send + Sync + fmt::Debug + 'static {
    /// Stable name, stored with each run (`training_jobs.backend`).
    fn name(&self) -> &str;

    /// Free slots now.
    fn capacity(&self) -> usize;

    /// Starts a run of `spec`; returns once it is running (not when it ends).
    async fn start(&self, spec: &JobSpec) -> Result<RunId, BackendError>;

    async fn status(&self, run: &RunId) -> Result<RunState, BackendError>;

    /// Asks the run to stop and makes sure it does (a grace period, then by force). Returns at
    /// once; idempotent; a run that already ended or is unknown is fine.
    async fn cancel(&self, run: &RunId) -> Result<(), BackendError>;

    /// The job of `run` has ended for good (or moved past training) and its run is gone: the
    /// backend may delete what it kept for the job (resume state, job folders). Default: nothing.
    async fn release(&self, _run: &RunId, _lora: LoraId) {}

    /// The engine is stopping: ask every run to stop gracefully (so it can checkpoint) and wait
    /// for them, within the backend's grace period. Their jobs are requeued and resumed by the
    /// next engine. Default: nothing (runs elsewhere outlive this process).
    async fn shutdown(&self) {}

    /// Progress reported since the last call, oldest first. Backends whose workers report to the
    /// control plane directly return nothing.
    fn drain_reports(&self) -> Vec<RunReport> {
        Vec::new()
    }
}
