//! The seam between the engine and the places training runs. A [`TrainingBackend`] launches an
//! instance that runs `loraforge worker` for one attempt (a child process, a rented pod, a
//! serverless job), says what it sees of its instances, and ends them. Everything a run says
//! about itself (progress, its result, its failure) reaches the control plane over the worker
//! protocol, never through the backend; what the backend adds is what only it can see: an
//! instance that ended or vanished without a word, and the end of the instance itself.
//! Backends are an open set and several are live at once (`Arc<dyn TrainingBackend>`).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use loraforge_domain::{LoraId, MicroUsd, SampleBatchId};

/// What a launched worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    /// Train attempt `attempt` of the LoRA's job.
    #[default]
    Train,
    /// Render sample batch `batch` with the (completed) LoRA; `attempt` is the batch's.
    Sample { batch: SampleBatchId },
}

/// The worker's environment variable naming a sample batch (absent: train).
pub const SAMPLE_BATCH_ENV: &str = "LORAFORGE_SAMPLE_BATCH";

/// What an instance needs to run one attempt: the worker's environment
/// (`LORAFORGE_SERVER`, `LORAFORGE_LORA_ID`, `LORAFORGE_WORKER_TOKEN`, and
/// `LORAFORGE_SAMPLE_BATCH` for sample work) and its name.
#[derive(Clone)]
pub struct Launch {
    pub lora_id: LoraId,
    /// 1 on the first run of the job, 2 on the next, …
    pub attempt: u32,
    /// The instance's name at the provider (`domain::run::instance_name`).
    pub instance_name: String,
    /// The control plane's base URL as the worker reaches it.
    pub server: String,
    /// The per-attempt worker token. A credential: never logged.
    pub token: String,
    /// An earlier launch of this attempt failed: its instance may exist after all (an answer
    /// lost in transit), so a backend that cannot create idempotently looks for it first.
    pub retry: bool,
    /// Training (the default) or a sample batch.
    pub task: Task,
}

impl fmt::Debug for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launch")
            .field("lora_id", &self.lora_id)
            .field("attempt", &self.attempt)
            .field("instance_name", &self.instance_name)
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("retry", &self.retry)
            .field("task", &self.task)
            .finish()
    }
}

impl Launch {
    /// The worker's environment variables.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("LORAFORGE_SERVER".to_owned(), self.server.clone()),
            ("LORAFORGE_LORA_ID".to_owned(), self.lora_id.to_string()),
            ("LORAFORGE_WORKER_TOKEN".to_owned(), self.token.clone()),
        ];
        if let Task::Sample { batch } = self.task {
            env.push((SAMPLE_BATCH_ENV.to_owned(), batch.to_string()));
        }
        env
    }
}

/// A launched instance, as the backend describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// The backend's handle on the instance (a pod id, a job id, a process).
    pub provider_id: String,
    pub gpu_type: Option<String>,
    pub price_per_hour: Option<MicroUsd>,
}

/// A run's instance, as the engine names it to its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub provider_id: String,
    pub instance_name: String,
    pub lora_id: LoraId,
    pub attempt: u32,
}

/// What a backend sees of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Starting or running.
    Running,
    /// The run ended. `outcome` is the backend's account (a `domain::outcome` code), used only
    /// when the worker reported nothing itself; `gone`: the instance no longer exists (else it
    /// still has to be terminated).
    Ended {
        outcome: &'static str,
        reason: Option<String>,
        gone: bool,
    },
}

/// What a call to [`TrainingBackend::terminate`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termination {
    /// The instance is confirmed gone.
    pub gone: bool,
    /// Billed time when the provider says it (serverless execution time), in milliseconds; else
    /// the engine bills from the run's creation to the confirmed end at its price per hour.
    pub billed_millis: Option<u64>,
}

/// How urgently an instance should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The run finished: its worker is exiting on its own; force it only after a grace period.
    Finished,
    /// The job no longer wants the run (cancel, timeout, requeue): stop it now.
    Stop,
}

/// Where a backend's instances can be reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only from the engine that launched them (processes on its host).
    Engine,
    /// From any replica (a provider's API).
    Shared,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No capacity anywhere this backend can look (every GPU type taken); try later or elsewhere.
    #[error("no capacity: {0}")]
    NoCapacity(String),
    /// The call failed for a reason that may pass (I/O, a provider's 5xx or 429, a timeout).
    #[error("{0}")]
    Transient(String),
    /// The call can never succeed as configured (bad credentials, missing program, bad image).
    #[error("{0}")]
    Permanent(String),
    /// The provider asked us to slow down (HTTP 429) and did nothing: not a failure of the
    /// provider (it does not count toward the circuit breaker). `retry_after`: how long it asked
    /// to wait, when it said.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after: Option<Duration>,
    },
}

impl BackendError {
    /// Worth trying again unchanged, after a pause.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BackendError::NoCapacity(_)
                | BackendError::Transient(_)
                | BackendError::Throttled { .. }
        )
    }

    pub fn is_capacity(&self) -> bool {
        matches!(self, BackendError::NoCapacity(_))
    }

    pub fn is_throttled(&self) -> bool {
        matches!(self, BackendError::Throttled { .. })
    }

    /// Whether this says something about the provider's health (a circuit breaker counts it):
    /// everything but a request to slow down.
    pub fn is_provider_failure(&self) -> bool {
        !self.is_throttled()
    }
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        if io_is_retryable(&e) {
            BackendError::Transient(e.to_string())
        } else {
            BackendError::Permanent(e.to_string())
        }
    }
}

/// I/O errors that say "not now" rather than "never".
pub(crate) fn io_is_retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::Interrupted
            | K::WouldBlock
            | K::TimedOut
            | K::ResourceBusy
            | K::ExecutableFileBusy
            | K::OutOfMemory
    )
}

/// Issues the per-attempt credential a worker presents to the control plane. The control plane
/// implements it (a signed token naming the job, the attempt and this engine); the engine only
/// hands the result to the backend.
pub trait WorkerTokens: Send + Sync + fmt::Debug + 'static {
    fn issue(&self, lora: LoraId, attempt: u32, worker_id: &str) -> Result<String, String>;

    /// The credential of attempt `attempt` of sample batch `batch`. Default: none can be issued
    /// (sample work is then not launched).
    fn issue_sample(&self, _batch: SampleBatchId, _attempt: u32) -> Result<String, String> {
        Err("this control plane issues no sample tokens".to_owned())
    }
}

#[async_trait]
pub trait TrainingBackend: Send + Sync + fmt::Debug + 'static {
    /// Stable name, stored with each run (`training_runs.backend`).
    fn name(&self) -> &str;

    /// Instances at once: per engine for [`Scope::Engine`], in all for [`Scope::Shared`].
    fn max_runs(&self) -> usize;

    fn scope(&self) -> Scope;

    /// Whether this backend runs our worker image/binary and so can render sample batches
    /// (`Task::Sample`). Backends that train through someone else's trainer (Replicate's cog
    /// model, ai-toolkit) cannot. Default: false.
    fn runs_samples(&self) -> bool {
        false
    }

    /// How often the engine asks about this backend's instances (a provider's API has rate
    /// limits; a local process table has none).
    fn observe_every(&self) -> Duration {
        Duration::ZERO
    }

    /// Starts an instance for `launch`; returns once the backend accepted it (not when the run
    /// ends).
    async fn launch(&self, launch: &Launch) -> Result<Launched, BackendError>;

    /// What the backend sees of each instance, in the same order. One call for all of them, so a
    /// provider can answer from one listing.
    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError>;

    /// Ends the instance (idempotent; an instance already gone is fine) and says whether it is
    /// confirmed gone. The engine calls it until it is, for every run that ended for any reason.
    async fn terminate(
        &self,
        instance: &Instance,
        ending: Ending,
    ) -> Result<Termination, BackendError>;

    /// Every instance of this backend whose name starts with `prefix`, as (provider id, name),
    /// for the orphan sweep; `None` when the backend cannot list (its instances are processes of
    /// this host, found by the engine's own records). Default: `None`.
    async fn list_instances(
        &self,
        _prefix: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        Ok(None)
    }

    /// `instance` is confirmed gone and its job will run again: what the attempt left on this
    /// backend (a scratch folder) may be handed to the job's next attempt or deleted. Called
    /// before the engine records the instance gone, so the next attempt (which starts only once
    /// it is recorded) finds what was handed over. Idempotent. Default: nothing.
    async fn retire(&self, _instance: &Instance) {}

    /// The job of `lora` has ended for good and all its instances are gone: the backend may
    /// delete what it kept for the job (scratch folders). `published`: the LoRA's files are
    /// stored, so trained files an attempt kept unuploaded are of no more use either. Default:
    /// nothing.
    async fn release(&self, _lora: LoraId, _published: bool) {}

    /// The engine is stopping: ask every instance this process supervises to stop gracefully
    /// and wait for them within the backend's grace period. Default: nothing (instances
    /// elsewhere outlive this process and are found again by the next engine).
    async fn shutdown(&self) {}
}
