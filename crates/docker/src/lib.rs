//! The `docker` backend: one container of the worker image (`docker/worker.Dockerfile`) per
//! training attempt (or sample batch attempt) on a Docker host, through the Docker Engine API
//! with bollard. The container runs `loraforge worker` with the same environment a RunPod pod
//! gets and calls back to the control plane over the worker protocol; the backend adds only what
//! Docker alone sees (a container that exited, was OOM-killed or disappeared) and ends containers.
//!
//! - Launch: the image is pulled when the host lacks it; the container is created under the
//!   attempt's instance name with `loraforge.*` labels, GPUs as device requests and the per-job
//!   memory and CPU limits, then started. A create is never repeated blindly: a retried launch,
//!   or a create answered 409 (the name is taken), takes the container of that name.
//! - Observe: one listing of the managed containers answers for every run; only a container
//!   that exited is inspected, for its exit code and OOM flag.
//! - Terminate: `stop` (SIGTERM, SIGKILL after its timeout) and a forced remove; a finished run
//!   gets a grace period to exit on its own first. A container Docker no longer knows is gone.
//! - The orphan sweep lists containers by label, so containers left by a crashed `serve` (or
//!   one whose records were lost) are found and removed.
//!
//! Every call has a timeout. Docker's errors map onto [`BackendError`]: no GPU → no capacity;
//! connection failures, timeouts and 5xx → transient; an image that cannot be pulled or a
//! configuration Docker refuses → permanent.

mod backend;
mod error;
mod settings;

pub use backend::DockerBackend;
pub use error::backend_error;
pub use settings::{DockerSettings, Gpus, connect, parse_cpus};

/// Labels every container of this backend carries.
pub mod labels {
    /// The instance (attempt) name; also the container's name.
    pub const INSTANCE: &str = "loraforge.instance";
    /// The LoRA trained, or sampled by a sample batch.
    pub const LORA: &str = "loraforge.lora";
    /// The training job's attempt, or the sample batch's.
    pub const ATTEMPT: &str = "loraforge.attempt";
    /// The sample batch, on a container that renders one (absent on training containers).
    pub const SAMPLE_BATCH: &str = "loraforge.sample_batch";
    /// `true` on every container this backend made: what listings filter on.
    pub const MANAGED: &str = "loraforge.managed";
}
