//! Jobs, runs and breakers as the repository hands them to the engine.

use chrono::{DateTime, Utc};

use loraforge_domain::breaker::{Breaker, BreakerState};
use loraforge_domain::validation::ValidationScores;
use loraforge_domain::{LoraId, LoraModel, MicroUsd, RunId, TrainingRun, TrainingStatus};

use crate::TrainedFiles;

/// A job handed to a worker by [`Repository::claim_next_job`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub lora: LoraModel,
    pub worker: String,
    pub lease_until: DateTime<Utc>,
    /// 1 on the first run, 2 after one requeue, …
    pub attempt: u32,
}

/// A run whose instance is not confirmed gone ([`Repository::open_runs`]), with what the engine
/// needs to know of its job.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRun {
    pub run: TrainingRun,
    pub job_status: TrainingStatus,
    /// The run is its job's current run (a requeue or a newer run makes it stale).
    pub current: bool,
    /// The engine holding the job's lease, if leased.
    pub job_worker: Option<String>,
    /// Runs of the job that failed through their own fault so far.
    pub job_failures: u32,
    /// The job's latest attempt number (every run counts).
    pub job_attempt: u32,
}

/// An operator alert ([`Repository::record_alert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub id: i64,
    /// e.g. `orphan_instance`.
    pub kind: String,
    /// What it is about (an instance, a LoRA).
    pub subject: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

/// A run a backend accepted, for [`Repository::insert_run`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: RunId,
    pub lora_id: LoraId,
    pub attempt: u32,
    pub backend: String,
    /// Why the router chose `backend` (shown with the run).
    pub route_reason: Option<String>,
    pub engine: String,
    pub instance_name: String,
    pub provider_id: String,
    pub gpu_type: Option<String>,
    pub price_per_hour: Option<MicroUsd>,
    pub created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
}

/// What the job does about a run's outcome ([`Repository::settle_run`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// Back to the queue; `counted`: the run's failure uses up one of the job's attempts.
    Requeue { counted: bool, reason: String },
    /// The job fails.
    Fail { reason: String },
    /// The trained files passed their check: `validating`, then the verdict, in one commit.
    Publish {
        files: TrainedFiles,
        verdict: PublishVerdict,
        /// The scores the verdict was judged by, kept with the LoRA; `None` without a scorer.
        scores: Option<ValidationScores>,
    },
    /// The trained file failed its check: `failed`, with the files recorded.
    Reject { files: TrainedFiles, reason: String },
    /// The job already moved on: only mark the run settled.
    Nothing,
}

/// The quality verdict a publish applies.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishVerdict {
    Complete,
    Fail(String),
    /// Waits in `validating` for an admin's review (stage `awaiting_review`).
    Review,
}

/// The current claim on a job ([`Repository::job_claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobClaim {
    /// The engine holding the lease; `None` while queued.
    pub worker: Option<String>,
    pub attempt: u32,
    pub lease_until: Option<DateTime<Utc>>,
    /// The newest checkpoint in the blob store: its key and step.
    pub checkpoint: Option<(String, u64)>,
}

/// A job in `training` whose lease has ended ([`Repository::expired_leases`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredLease {
    pub lora_id: LoraId,
    pub attempt: u32,
    pub lease_until: DateTime<Utc>,
}

/// A job in `training` longer than some cutoff ([`Repository::jobs_running_longer_than`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub lora_id: LoraId,
    pub started_at: DateTime<Utc>,
    pub attempt: u32,
}

/// A backend's circuit breaker with its provider-side failures in the window
/// ([`Repository::breakers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStatus {
    pub breaker: Breaker,
    /// Failures within the rules' window since the breaker last closed.
    pub failures_in_window: u32,
}

/// What [`Repository::step_breaker`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStep {
    /// The breaker after the event.
    pub breaker: Breaker,
    /// The event changed the stored breaker (a probe claimed, a state changed). A probe claim
    /// is won exactly when this is `true`.
    pub changed: bool,
    /// The state change, as recorded in `breaker_transitions`.
    pub transition: Option<BreakerTransition>,
    pub failures_in_window: u32,
}

/// One recorded change of a breaker's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerTransition {
    pub id: i64,
    pub backend: String,
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: String,
    /// The admin who forced it; `None` when the breaker decided.
    pub forced_by: Option<String>,
    pub at: DateTime<Utc>,
}

/// A claimed job whose run has not started yet and whose next start attempt is due
/// ([`Repository::starts_due`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartDue {
    pub lora_id: LoraId,
    pub attempt: u32,
    /// Failed start attempts so far in this claim.
    pub start_failures: u32,
}
