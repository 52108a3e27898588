//! The job engine: the control plane's loop that moves training jobs along. Each
//! [`Engine::tick`] admits pending LoRAs to the queue, times out runs that take too long, looks
//! at every run it started (what its backend sees, what its worker reported), settles each run's
//! outcome on its job (publish after the after-training checks, requeue, fail), ends every
//! instance whose run is over and records its cost, reaps jobs whose lease expired, and
//! launches queued jobs on [`TrainingBackend`]s with room. All state is in the database
//! (`loraforge-db`: the job, and one `training_runs` row per attempt), so a tick can run on any
//! replica and after any restart; status changes go only through the repository (the domain's
//! status machine). Backend calls run concurrently, each with a timeout. Time comes from an
//! injected `Clock`, and `tick` never sleeps or spawns, so tests step the engine one tick at a
//! time.

mod after_training;
mod backend;
pub mod backends;
mod budget;
mod budget_metrics;
#[cfg(feature = "test-support")]
pub mod conformance;
mod dispatch;
mod engine;
mod refusals;
mod router;
mod runs;
mod samples;
mod settings;
pub mod supervise;
mod sweep;

pub use after_training::{AfterTraining, ValidationRules};
pub use backend::{
    BackendError, Ending, Instance, Launch, Launched, Observed, SAMPLE_BATCH_ENV, Scope, Task,
    Termination, TrainingBackend, WorkerTokens,
};
pub use budget::{BudgetGate, BudgetRefresh, BudgetSettings};
pub use engine::{Engine, TickReport};
pub use router::LaunchGate;
pub use settings::{EngineSettings, human_duration};
pub use supervise::{EngineHealth, HealthReport, supervise};
pub use sweep::SweepReport;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Db(#[from] loraforge_db::DbError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A worker token could not be issued.
    #[error("issuing the worker's token: {0}")]
    Token(String),
}

impl EngineError {
    /// Worth trying again on the next tick.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Db(e) => e.is_retryable(),
            EngineError::Backend(e) => e.is_retryable(),
            EngineError::Token(_) => false,
        }
    }
}
