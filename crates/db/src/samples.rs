//! Sample batches (`0014_samples.sql`): images rendered with a completed LoRA. A batch is created
//! with its images' prompts, seeds, scales and storage keys (`keys::sample_image`); the engine
//! claims due batches (`queued`, due, no earlier instance still alive), records the instance it
//! launched, the worker's fetch and heartbeats record when it was last heard of (`0017`), and
//! the worker's result completes the batch, or a failure requeues it with the
//! domain's backoff until `samples::MAX_ATTEMPTS`. Every status change goes through
//! `domain::samples::transition` and is written with a compare-and-set on (status, attempts), so
//! a stale attempt's report never touches a newer attempt.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::samples::{SampleEvent, SampleSpec, SampleStatus, retry_delay, transition};
use loraforge_domain::{LoraId, SampleBatchId, UserId, keys};

use crate::{DbError, Result};

/// A batch to create.
#[derive(Debug, Clone)]
pub struct NewSampleBatch {
    pub id: SampleBatchId,
    pub lora_id: LoraId,
    pub user_id: UserId,
    pub spec: SampleSpec,
}

impl NewSampleBatch {
    /// The batch's images, keyed.
    pub fn images(&self) -> Vec<SampleImage> {
        self.spec
            .prompts
            .iter()
            .enumerate()
            .map(|(i, p)| SampleImage {
                index: i as u32,
                prompt: p.prompt.clone(),
                negative_prompt: p.negative_prompt.clone(),
                seed: p.seed,
                scale: p.scale,
                width: self.spec.width,
                height: self.spec.height,
                storage_key: keys::sample_image(self.user_id, self.lora_id, self.id, i),
            })
            .collect()
    }
}

/// One image of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleImage {
    pub index: u32,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub scale: f64,
    pub width: u32,
    pub height: u32,
    pub storage_key: String,
}

/// The instance an attempt runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleInstance {
    pub backend: String,
    /// The engine (worker id) that launched it: only it watches a `Scope::Engine` backend's
    /// instance (a process on its host).
    pub engine: String,
    pub provider_id: String,
    pub instance_name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampleBatch {
    pub id: SampleBatchId,
    pub lora_id: LoraId,
    pub user_id: UserId,
    pub status: SampleStatus,
    pub steps: u32,
    /// Attempts started (the current one's number while `rendering`).
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// The latest attempt's instance, once launched.
    pub instance: Option<SampleInstance>,
    pub instance_gone_at: Option<DateTime<Utc>>,
    /// When the current attempt's worker was last heard of (its fetch, then each heartbeat);
    /// `None` before its first word. Reset by each claim.
    pub heard_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The last change of the batch's state: while `rendering`, when the attempt was claimed,
    /// then when its instance was recorded (heartbeats leave it alone).
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub images: Vec<SampleImage>,
}

/// One page of a LoRA's batches ([`SampleStore::sample_batches_of`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleBatchPage {
    pub batches: Vec<SampleBatch>,
    /// Every batch the listing's filter matches, on any page.
    pub total: u64,
}

/// What [`SampleStore::insert_sample_batch`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchInsert {
    Inserted(Box<SampleBatch>),
    /// The owner already has `open` batches queued or rendering (nothing inserted).
    TooManyOpen {
        open: u32,
    },
}

#[async_trait]
pub trait SampleStore: Send + Sync {
    /// Inserts a `queued` batch (due now) and its images, unless the owner has `max_open` open
    /// batches already; the count and the insert are atomic per user.
    async fn insert_sample_batch(
        &self,
        batch: &NewSampleBatch,
        max_open: u32,
        now: DateTime<Utc>,
    ) -> Result<BatchInsert>;

    async fn sample_batch(&self, id: SampleBatchId) -> Result<Option<SampleBatch>>;

    /// A LoRA's batches (only `requester`'s when given), newest first: `limit` of them after the
    /// first `offset`, and how many there are in all.
    async fn sample_batches_of(
        &self,
        lora: LoraId,
        requester: Option<UserId>,
        limit: u32,
        offset: u64,
    ) -> Result<SampleBatchPage>;

    /// `queued` batches due at `now` whose earlier instance (if any) is confirmed gone, oldest
    /// first, at most `limit`.
    async fn due_sample_batches(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<SampleBatch>>;

    /// `queued` → `rendering` as attempt `attempts_seen + 1` (compare-and-set on both); clears
    /// the earlier attempt's instance. False when someone else claimed it first.
    async fn claim_sample_batch(
        &self,
        id: SampleBatchId,
        attempts_seen: u32,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Records the instance attempt `attempt` was launched on. False when the batch no longer
    /// renders that attempt (its claim was given up meanwhile) or has an instance already.
    async fn record_sample_instance(
        &self,
        id: SampleBatchId,
        attempt: u32,
        instance: &SampleInstance,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// A claimed attempt that could not be launched (no room): back to `queued`, due at
    /// `retry_at`, its attempt not used.
    async fn unclaim_sample_batch(
        &self,
        id: SampleBatchId,
        attempt: u32,
        retry_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Attempt `attempt` stored every image: `completed`. False when the batch is not rendering
    /// that attempt.
    async fn complete_sample_batch(
        &self,
        id: SampleBatchId,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Attempt `attempt` ended without images: `queued` again after the backoff, or `failed`
    /// with `reason` when out of attempts or not `retryable`. `None` when the batch is not
    /// rendering that attempt (a report already counted).
    async fn fail_sample_attempt(
        &self,
        id: SampleBatchId,
        attempt: u32,
        reason: &str,
        retryable: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<SampleStatus>>;

    /// The batches the engine watches: those with an instance not yet confirmed gone (any
    /// status), and those rendering (an attempt claimed, its instance maybe not recorded yet).
    async fn watched_sample_batches(&self) -> Result<Vec<SampleBatch>>;

    /// The worker of attempt `attempt` was heard of at `now` (`heard_at`). False when the batch
    /// no longer renders that attempt.
    async fn record_sample_heartbeat(
        &self,
        id: SampleBatchId,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// The instance `provider_id` of batch `id` is confirmed gone.
    async fn record_sample_instance_gone(
        &self,
        id: SampleBatchId,
        provider_id: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

/// What a failed attempt changes: (status, next_attempt_at, finished_at).
pub(crate) fn after_failure(
    attempt: u32,
    retryable: bool,
    now: DateTime<Utc>,
) -> (SampleStatus, DateTime<Utc>, Option<DateTime<Utc>>) {
    let next = transition(
        SampleStatus::Rendering,
        SampleEvent::AttemptFailed {
            attempts: attempt,
            retryable,
        },
    )
    .unwrap_or(SampleStatus::Failed);
    match next {
        SampleStatus::Queued => {
            let delay = chrono::Duration::from_std(retry_delay(attempt))
                .unwrap_or(chrono::Duration::seconds(60));
            (next, now + delay, None)
        }
        _ => (SampleStatus::Failed, now, Some(now)),
    }
}

/// Checks a transition the SQL is about to make (the compare-and-set names `from`).
pub(crate) fn check(from: SampleStatus, event: SampleEvent) -> Result<SampleStatus> {
    transition(from, event)
        .ok_or_else(|| DbError::Corrupt(format!("sample batch: {event:?} from {from:?}")))
}

/// Decodes a stored status.
pub(crate) fn status(s: &str) -> Result<SampleStatus> {
    SampleStatus::parse(s).ok_or_else(|| DbError::Corrupt(format!("sample status {s:?}")))
}

pub(crate) fn u32_of(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| DbError::Corrupt(format!("{what} {v}")))
}

pub(crate) fn instance_of(
    backend: Option<String>,
    engine: Option<String>,
    provider_id: Option<String>,
    instance_name: Option<String>,
) -> Option<SampleInstance> {
    match (backend, engine, provider_id, instance_name) {
        (Some(backend), Some(engine), Some(provider_id), Some(instance_name)) => {
            Some(SampleInstance {
                backend,
                engine,
                provider_id,
                instance_name,
            })
        }
        _ => None,
    }
}

pub(crate) fn parse_id<T: std::str::FromStr>(s: &str, what: &str) -> Result<T> {
    s.parse()
        .map_err(|_| DbError::Corrupt(format!("{what} {s:?} is not an id")))
}
