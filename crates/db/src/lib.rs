//! The repository: everything loraforge keeps in a database, behind one trait with two engines.
//! SQLite (the embedded default) and Postgres each have their own module and their own
//! `migrations/` folder; SQL dialect never leaks out of them. The trait speaks domain types only.
//!
//! Contracts every engine keeps (the conformance suite in `tests/` checks them on both):
//! - a status changes only through [`Repository::apply_event`] / [`Repository::claim_next_job`],
//!   which compute the new status with `loraforge_domain::status::transition` and write it with a
//!   compare-and-set on the old one; every change appends a row to the LoRA's event log;
//! - [`Repository::create_lora`] is atomic and race-free per user: the idempotency key, the
//!   duplicate-name check, the monthly count and the insert happen under one per-user lock, so 20
//!   concurrent creates at limit 5 give exactly 5 LoRAs;
//! - nothing is ever deleted from `lora_models`.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use faults::{FaultPoint, Faults};
pub use ledger::LedgerStore;
pub use library::{LibraryRow, LoraQuery, Page, SEARCH_TOTAL_CAP};
use loraforge_domain::breaker::{BreakerEvent, BreakerRules};
use loraforge_domain::validation::ValidationScores;
use loraforge_domain::{
    DailyWindow, Dataset, DatasetId, DatasetQuota, DatasetUsage, LoraId, LoraModel, LoraName,
    LoraSummary, MicroUsd, MonthlyWindow, Progress, QuotaExceeded, RunId, StatusEvent,
    TrainingParams, TrainingRun, TrainingStatus, TransitionError, UserId,
};
pub use runs::{
    Alert, BreakerStatus, BreakerStep, BreakerTransition, ClaimedJob, ExpiredLease, JobClaim,
    NewRun, OpenRun, PublishVerdict, RunningJob, Settle, StartDue,
};

pub mod alerts;
pub mod archival;
mod common;
pub mod credits;
mod faults;
pub mod ledger;
mod library;
pub mod library_index;
pub mod metrics;
pub mod moderation;
mod runs;
pub use metrics::{MetricsStore, OpsSnapshot, RunTotals, SeededRuns};
pub mod feed;
pub mod finish_mails;
pub mod handoff;
pub mod monitors;
pub mod names;
pub mod nudges;
pub mod postgres;
pub mod samples;
pub mod seed;
pub mod sqlite;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod usage;
pub mod webhooks;

pub use webhooks::{
    AttemptNext, DueDelivery, LoraWebhook, NewDelivery, NewWebhook, PendingWebhookEvent,
    WebhookAttempt, WebhookBatch, WebhookDelivery, WebhookStore,
};

pub use credits::{
    CreditEntry, CreditStore, CreditSummary, DueReservation, NewCreditGrant, SettledCredits,
};

pub use alerts::{
    AlertDelivery, AlertQuery, AlertRecord, AlertStore, DeliveryAttempt, DueAlertDelivery, Raised,
};

pub use archival::{ArchivalCandidate, ArchivalStore};
pub use feed::{FeedCursor, FeedPage, LibraryFeed};
pub use finish_mails::{FinishMailStore, FinishedLora};
pub use handoff::HandoffStore;
pub use library_index::{LibraryIndex, SyncedIndex};
pub use moderation::{
    Filed, HideOutcome, ModerationStore, NewReport, Report, ReportQuery, ReportRow, ReportState,
};
pub use monitors::{MonitorStats, MonitorStore, StuckCleanup};
pub use names::{NameStore, NameUse};
pub use nudges::NudgeStore;
pub use samples::{
    BatchInsert, NewSampleBatch, SampleBatch, SampleBatchPage, SampleImage, SampleInstance,
    SampleStore,
};
pub use usage::{DayUses, UsageStore, UseRecord};

pub type Result<T, E = DbError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("not found")]
    NotFound,
    /// Holds the name the owner already has (names are compared by `LoraName::key`, so it may
    /// differ from the one asked for in case, width or invisible characters).
    #[error(
        "you already have a LoRA named {0:?} (names are compared ignoring case, width and invisible characters); choose another name"
    )]
    DuplicateName(String),
    #[error("monthly limit reached: {used} of {limit} used")]
    MonthlyLimitReached { used: u32, limit: u32 },
    /// The create's reservation does not fit the owner's available credits (nothing created).
    #[error("not enough credits: {} available, {} needed", .summary.available.0, .price.0)]
    InsufficientCredits {
        summary: CreditSummary,
        price: MicroUsd,
    },
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("the dataset does not exist or belongs to someone else")]
    DatasetNotFound,
    #[error("daily dataset quota reached: {} of {} {} used", .0.used, .0.limit, .0.kind.as_str())]
    DatasetQuotaReached(QuotaExceeded),
    /// An image blob is being deleted by the sweep right now; storing it again must wait.
    #[error("an image blob is being deleted; try again shortly")]
    BlobBusy,
    #[error("unsupported database URL {0:?}; use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("fault injected at {0:?}")]
    Injected(FaultPoint),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A compare-and-set kept losing to concurrent writers; the caller may try again.
    #[error("the record kept changing concurrently; try again")]
    Conflict,
}

impl DbError {
    /// Worth trying again unchanged (lost connection, pool timeout, serialization failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Conflict | DbError::BlobBusy => true,
            DbError::Sqlx(e) => {
                matches!(
                    e,
                    sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
                ) || matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40001" | "40P01" | "5" | "6")))
            }
            _ => false,
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, DbError::NotFound)
    }
}

/// A new LoRA and its training job, as the API hands it to the repository.
#[derive(Debug, Clone)]
pub struct NewLora {
    pub id: LoraId,
    pub owner: UserId,
    /// The owner's email from their token, remembered for "by user@example.com".
    pub owner_email: Option<String>,
    pub name: LoraName,
    pub description: Option<String>,
    pub dataset_id: DatasetId,
    pub params: TrainingParams,
    pub idempotency: Option<IdempotencyKey>,
    /// With credits on: the amount reserved from the owner's credits in the create's
    /// transaction (`InsufficientCredits` when it does not fit what is available). `None`: no
    /// reservation (credits off). An idempotent replay reserves nothing.
    pub reserve: Option<MicroUsd>,
    /// A client webhook, stored with the LoRA in the create's transaction.
    pub webhook: Option<NewWebhook>,
    pub now: DateTime<Utc>,
    /// The generator's character this LoRA is for (cleaned identifier), if any.
    pub character_id: Option<String>,
    /// The generation job that asked for it (cleaned identifier), if any.
    pub triggered_by_job_id: Option<String>,
}

/// `Idempotency-Key` header plus a hash of the request body: the same key with another body is
/// refused rather than answered with the wrong LoRA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

/// The monthly rule in force for one create.
#[derive(Debug, Clone, Copy)]
pub struct MonthlyPolicy {
    pub limit: u32,
    pub window: MonthlyWindow,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created(LoraModel),
    /// The idempotency key was seen before with the same request: the first result.
    Replayed(LoraModel),
}

impl CreateOutcome {
    pub fn lora(&self) -> &LoraModel {
        match self {
            CreateOutcome::Created(l) | CreateOutcome::Replayed(l) => l,
        }
    }
}

/// Extra facts recorded with a status change.
#[derive(Debug, Clone, Default)]
pub struct EventDetail {
    /// Why it failed or was cancelled, for people.
    pub error: Option<String>,
    /// Files a finished training run stored, recorded with the change.
    pub outputs: Option<TrainedFiles>,
    /// The validation verdict, recorded with the change (`Complete` / `Fail` after validation).
    pub validation_passed: Option<bool>,
    /// The scoring model's scores and the threshold the rule used, recorded with the change
    /// (`BeginValidation` of a publish judged by scores).
    pub validation_scores: Option<ValidationScores>,
}

impl EventDetail {
    /// Only a reason, for people.
    pub fn because(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// Where a trained LoRA's files are in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainedFiles {
    /// `lora-models/{user}/{lora}/model.safetensors`.
    pub storage_key: String,
    pub file_size: u64,
    /// The model file's lowercase hex sha256, when known (the after-training service always
    /// knows it); recorded with the files, replacing an earlier file's.
    pub sha256: Option<String>,
    /// `lora-validation-images/{user}/{lora}/validation/{i}.png`, in order.
    pub validation_image_keys: Vec<String>,
}

/// One entry in a LoRA's event log; `id` is global and increasing, and is the SSE event id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraEvent {
    pub id: i64,
    pub lora_id: LoraId,
    /// "created", "status", "progress" or "updated".
    pub kind: String,
    pub status: TrainingStatus,
    /// A snapshot of what changed (progress, error, …), as JSON.
    pub data: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// A LoRA an idempotency key names ([`Repository::idempotent_lora`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotentLora {
    /// The hash of the request that first used the key.
    pub request_hash: String,
    pub lora: LoraModel,
}

/// A user's own record ([`Repository::user_profile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    pub id: UserId,
    /// The latest e-mail seen in the user's token.
    pub email: Option<String>,
    /// The name they chose, if any.
    pub display_name: Option<String>,
}

/// What [`Repository::sweep_datasets`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetCutoffs {
    /// Datasets no LoRA uses, stored before this, are deleted.
    pub unused_before: DateTime<Utc>,
    /// The images of datasets whose LoRAs all finished (completed, failed, cancelled) before
    /// this are removed; `None` keeps them.
    pub trained_before: Option<DateTime<Utc>>,
}

/// What one [`Repository::sweep_datasets`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweptDatasets {
    /// Datasets deleted with their images (no LoRA used them).
    pub deleted: Vec<DatasetId>,
    /// Datasets whose images were removed (their LoRAs finished long enough ago).
    pub images_removed: Vec<DatasetId>,
}

#[async_trait]
pub trait Repository:
    Send
    + Sync
    + std::fmt::Debug
    + 'static
    + ledger::LedgerStore
    + CreditStore
    + WebhookStore
    + metrics::MetricsStore
    + AlertStore
    + MonitorStore
    + FinishMailStore
    + NameStore
    + ArchivalStore
    + UsageStore
    + HandoffStore
    + ModerationStore
    + SampleStore
    + NudgeStore
    + LibraryFeed
{
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<()>;

    /// Failure injection points of this repository, for tests.
    fn faults(&self) -> &Faults;

    // --- datasets ---------------------------------------------------------------------------

    /// Stores a dataset and all of its images in one transaction.
    async fn insert_dataset(&self, dataset: &Dataset) -> Result<()>;
    /// Like [`Repository::insert_dataset`], under the owner's daily quota: in one per-user
    /// critical section, the datasets and bytes the owner stored in the UTC day of
    /// `dataset.created_at` plus this one must fit `quota` (`DatasetQuotaReached` otherwise).
    async fn insert_dataset_within(&self, dataset: &Dataset, quota: DatasetQuota) -> Result<()>;
    async fn get_dataset(&self, id: DatasetId) -> Result<Option<Dataset>>;
    /// Datasets (and their bytes) `user` stored inside `window`.
    async fn dataset_usage(&self, user: UserId, window: DailyWindow) -> Result<DatasetUsage>;

    /// Claims content-addressed image blobs before their bytes are written: each key is recorded
    /// (or its claim renewed) at `now`, which keeps the sweep off it for its grace period.
    /// `BlobBusy` (nothing claimed) when the sweep is deleting one of them.
    async fn claim_blobs(&self, keys: &[String], now: DateTime<Utc>) -> Result<()>;

    /// Deletes datasets no LoRA uses stored before `cutoffs.unused_before`, and removes the images
    /// of datasets whose LoRAs all finished before `cutoffs.trained_before`, at most `limit` of
    /// each, oldest first. Only rows: the blobs they referenced are left to
    /// [`Repository::orphan_blobs`]. A dataset a LoRA uses is never deleted.
    async fn sweep_datasets(
        &self,
        cutoffs: DatasetCutoffs,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<SweptDatasets>;

    /// Image blobs no dataset references and nobody claimed since `claimed_before`, marked as being
    /// deleted at `now` (with any still marked from an interrupted sweep), at most `limit`. The
    /// caller deletes their bytes, then [`Repository::forget_blobs`].
    async fn orphan_blobs(
        &self,
        claimed_before: DateTime<Utc>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>>;

    /// Forgets blobs whose bytes were deleted (only those still marked and unreferenced).
    async fn forget_blobs(&self, keys: &[String]) -> Result<()>;

    // --- users ------------------------------------------------------------------------------

    /// The user's own record; `None` for a user the service has not seen yet.
    async fn user_profile(&self, user: UserId) -> Result<Option<UserProfile>>;

    /// Sets (or with `None` clears) the user's display name, creating the user's record (with
    /// `email`, when given) if it does not exist yet.
    async fn set_display_name(
        &self,
        user: UserId,
        email: Option<&str>,
        display_name: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<UserProfile>;

    // --- the library ------------------------------------------------------------------------

    /// Creates a LoRA (status `pending`) and its training job. In one per-user critical section:
    /// an earlier request with the same idempotency key → `Replayed` (or `IdempotencyKeyReused`
    /// when the body differs); the dataset must exist and belong to the owner
    /// (`DatasetNotFound`); the owner must not have a LoRA with this name (`DuplicateName`);
    /// their LoRAs created inside `policy.window` with a counted status must be fewer than
    /// `policy.limit` (`MonthlyLimitReached`). If the count itself fails the create goes ahead
    /// and the failure is logged (fail open).
    async fn create_lora(&self, new: NewLora, policy: MonthlyPolicy) -> Result<CreateOutcome>;

    async fn get_lora(&self, id: LoraId) -> Result<Option<LoraModel>>;

    /// The LoRA an earlier create of `user` with idempotency key `key` made, with the hash of
    /// that request; `None` if the key is unused. Lets a caller answer a replay (or refuse a
    /// reused key) before doing any work; `create_lora` still decides under its lock.
    async fn idempotent_lora(&self, user: UserId, key: &str) -> Result<Option<IdempotentLora>>;

    /// The public library: every user's LoRAs.
    async fn list_loras(&self, query: &LoraQuery) -> Result<Page<LoraSummary>>;

    /// LoRAs of `user` created inside `window` whose status counts toward the limit.
    async fn count_monthly(&self, user: UserId, window: MonthlyWindow) -> Result<u32>;

    /// Sets the description (None clears it) and logs an "updated" event.
    async fn update_description(
        &self,
        id: LoraId,
        description: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<LoraModel>;

    // --- status and progress ----------------------------------------------------------------

    /// Applies `event` through the domain's transition function with a compare-and-set on the
    /// current status, and appends a "status" event. `Transition` error if not allowed now.
    async fn apply_event(
        &self,
        id: LoraId,
        event: StatusEvent,
        detail: EventDetail,
        now: DateTime<Utc>,
    ) -> Result<LoraModel>;

    /// Records progress of a running job and appends a "progress" event.
    async fn record_progress(
        &self,
        id: LoraId,
        progress: &Progress,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Event-log entries of one LoRA with `id > after`, oldest first, at most `limit`.
    async fn events_after(&self, id: LoraId, after: i64, limit: u32) -> Result<Vec<LoraEvent>>;

    // --- the job queue ----------------------------------------------------------------------

    /// Claims the oldest `queued` job whose owner has fewer than `max_active_per_user` jobs
    /// training or validating, moves it to `training` and leases it to `worker` until
    /// `lease_until`. Safe against concurrent claimers (other replicas on one Postgres).
    async fn claim_next_job(
        &self,
        worker: &str,
        max_active_per_user: u32,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<ClaimedJob>>;

    // --- the job engine ---------------------------------------------------------------------
    // Leases and runs only; every status change still goes through `apply_event`.

    /// Extends the lease of job `id` to `lease_until` (and sets its heartbeat to `now`) only if
    /// `worker` still holds it; `false` when it does not (requeued, finished, another worker).
    async fn heartbeat(
        &self,
        id: LoraId,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Jobs in `training` whose lease ended before `now`, oldest lease first.
    async fn expired_leases(&self, now: DateTime<Utc>) -> Result<Vec<ExpiredLease>>;

    /// Jobs in `training` whose current run started before `cutoff`, oldest first.
    async fn jobs_running_longer_than(&self, cutoff: DateTime<Utc>) -> Result<Vec<RunningJob>>;

    /// Runs whose instance is not confirmed gone, oldest first, with their jobs' state.
    async fn open_runs(&self) -> Result<Vec<OpenRun>>;

    /// Who holds job `id` and for which attempt; `None` if there is no such job. The worker API
    /// checks a worker's token against it.
    async fn job_claim(&self, id: LoraId) -> Result<Option<JobClaim>>;

    /// Records the newest checkpoint of job `id` (its blob `key` and `step`), only while `worker`
    /// holds the job for `attempt`; `false` otherwise.
    async fn record_checkpoint(
        &self,
        id: LoraId,
        worker: &str,
        attempt: u32,
        key: &str,
        step: u64,
    ) -> Result<bool>;

    // --- runs -------------------------------------------------------------------------------

    /// Records a run its backend accepted and makes it the job's current run, only while
    /// `run.engine` holds the job for `run.attempt` (`NotFound` otherwise: the job moved on, so
    /// the caller must end the instance). Clears the start-retry state.
    async fn insert_run(&self, run: &NewRun) -> Result<TrainingRun>;

    async fn get_run(&self, id: RunId) -> Result<Option<TrainingRun>>;

    /// Every run of a LoRA, by attempt.
    async fn runs_of(&self, lora: LoraId) -> Result<Vec<TrainingRun>>;

    /// Records how run `id` ended (a `domain::outcome` code, the reporter's reason and, for
    /// `trained`, the worker's result), unless an outcome is recorded already: the first report
    /// wins. Returns whether this one was recorded.
    async fn record_run_outcome(
        &self,
        id: RunId,
        code: &str,
        reason: Option<&str>,
        result: Option<&serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Applies `settle` to the run's job and marks the run settled, in one transaction, once:
    /// `None` if the run was settled already. A requeue or failure whose job moved on meanwhile
    /// only marks the run settled. Clears the job's current run on a requeue.
    async fn settle_run(
        &self,
        id: RunId,
        settle: Settle,
        now: DateTime<Utc>,
    ) -> Result<Option<LoraModel>>;

    /// The run's instance is confirmed gone and cost `cost`: recorded once, with the cost added
    /// to the LoRA's `training_cost`. Returns whether this call recorded it.
    async fn record_instance_gone(
        &self,
        id: RunId,
        cost: MicroUsd,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// A failed attempt to end the run's instance; the next is due at `next_at`. Returns the
    /// failures so far.
    async fn record_terminate_failure(
        &self,
        id: RunId,
        error: &str,
        next_at: DateTime<Utc>,
    ) -> Result<u32>;

    /// Undoes a claim whose launch found no capacity: the job goes back to `queued` without
    /// using an attempt, with `message` saying why it waits. Only while `worker` holds it and no
    /// run of it is recorded; `false` otherwise.
    async fn unclaim(
        &self,
        id: LoraId,
        worker: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    // --- operations ---------------------------------------------------------------------------

    /// Records an operator alert, deduplicated within the configured cooldown (see
    /// [`alerts`]; the same path as [`AlertStore::raise_alert`]).
    async fn record_alert(
        &self,
        kind: &str,
        subject: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// The newest alerts, newest first, at most `limit`.
    async fn alerts(&self, limit: u32) -> Result<Vec<Alert>>;

    /// Takes (or renews) the lease on periodic work `name` for `holder` until `until`, if nobody
    /// else holds it past `now`; `true` when `holder` has it.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Sets (or clears) the LoRA's status message, shown with its status.
    async fn set_status_message(
        &self,
        id: LoraId,
        message: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Ids of `pending` LoRAs, oldest first, at most `limit`.
    async fn pending_ids(&self, limit: u32) -> Result<Vec<LoraId>>;

    /// Records a failed start of job `id` that will be tried again at `next_attempt_at`;
    /// returns the number of failed starts of this claim so far.
    async fn record_start_failure(
        &self,
        id: LoraId,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<u32>;

    /// Jobs leased to `worker`, in `training`, with no run yet and a start attempt due at `now`.
    async fn starts_due(&self, worker: &str, now: DateTime<Utc>) -> Result<Vec<StartDue>>;

    // --- circuit breakers ----------------------------------------------------------------

    /// Applies `event` to `backend`'s breaker with `domain::breaker::step`, atomically across
    /// replicas (one transaction holding the breaker's row): a failure is recorded once per key
    /// and counted within `rules.window`; a probe claim is won by one caller only; every state
    /// change is appended to the transitions.
    async fn step_breaker(
        &self,
        backend: &str,
        event: &BreakerEvent,
        rules: &BreakerRules,
        now: DateTime<Utc>,
    ) -> Result<BreakerStep>;

    /// Every stored breaker (a backend without one is closed), by name.
    async fn breakers(
        &self,
        rules: &BreakerRules,
        now: DateTime<Utc>,
    ) -> Result<Vec<BreakerStatus>>;

    /// The newest transitions, newest first, of `backend` (all backends when `None`), at most
    /// `limit`.
    async fn breaker_transitions(
        &self,
        backend: Option<&str>,
        limit: u32,
    ) -> Result<Vec<BreakerTransition>>;

    // --- imports and benchmarks -------------------------------------------------------------

    /// For benchmarks and imports only: inserts finished library rows (and their job rows) in one
    /// transaction with multi-row inserts. Bypasses the monthly limit, idempotency and the event
    /// log; a duplicate name or id fails the whole batch. Returns the number of rows inserted.
    async fn bulk_insert_library(&self, rows: Vec<LibraryRow>) -> Result<u64>;
}

/// Options for [`connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
        }
    }
}

/// Opens the database named by `url` (`sqlite://PATH` or `postgres://…`), creating a SQLite file
/// if missing, and applies that engine's migrations.
pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<Arc<dyn Repository>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteRepository::connect(url, opts).await?,
        ))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(postgres::PgRepository::connect(url, opts).await?))
    } else {
        Err(DbError::UnsupportedUrl(redact_url(url)))
    }
}

/// A URL with its password replaced, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
