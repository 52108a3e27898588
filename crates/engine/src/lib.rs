//! The job engine: the control plane's loop that moves training jobs along. Each
//! [`Engine::tick`] admits pending LoRAs to the queue, relays progress from running work,
//! watches every run it started (exits, cancellations, runs lost in a restart), times out runs
//! that take too long, reaps jobs whose lease expired, and dispatches queued jobs to
//! [`TrainingBackend`]s with free slots. All state is in the database (`loraforge-db`), so a tick
//! can run on any replica and after any restart; status changes go only through
//! `Repository::apply_event` (the domain's status machine). Time comes from an injected `Clock`,
//! and `tick` never sleeps or spawns, so tests step the engine one tick at a time.

mod backend;
pub mod backends;
mod engine;
mod outcome;
mod settings;
mod trainer_line;

pub use backend::{BackendError, JobSpec, RunId, RunReport, RunState, SpecImage, TrainingBackend, WorkerTokens};
pub use engine::{Engine, TickReport};
pub use outcome::{RunOutcome, outcome_of_exit};
pub use settings::{EngineSettings, human_duration};
pub use trainer_line::{ProgressTracker, TrainerLine};

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
