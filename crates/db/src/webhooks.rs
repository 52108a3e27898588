//! Client webhooks: the webhook a LoRA was created with, each user's signing secret, the outbox
//! of deliveries made from the LoRA's event log, and every delivery attempt.
//!
//! Contracts (the conformance suite checks them on both engines):
//! - a LoRA's webhook is written in the create's transaction ([`crate::NewLora::webhook`]);
//! - [`WebhookStore::record_webhook_batch`] inserts deliveries and moves the LoRA's event cursor
//!   in one transaction, and only from the cursor it read: a crash neither loses nor repeats a
//!   delivery, and two replicas never both record one batch;
//! - a delivery is attempted by one holder at a time ([`WebhookStore::claim_webhook_deliveries`]
//!   leases it), and keeps its id on every attempt.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::webhooks::WebhookEvent;
use loraforge_domain::{LoraId, UserId};

use crate::{LoraEvent, Result};

/// The webhook a create asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    /// A vetted http(s) URL.
    pub url: String,
    /// The events delivered (never empty).
    pub events: Vec<WebhookEvent>,
}

/// A LoRA's webhook as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraWebhook {
    pub lora_id: LoraId,
    pub owner: UserId,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    /// The last event id already turned into deliveries.
    pub event_cursor: i64,
    /// The event time of the last `progress` delivery.
    pub last_progress_at: Option<DateTime<Utc>>,
}

/// An event-log entry past its LoRA's webhook cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingWebhookEvent {
    pub webhook: LoraWebhook,
    pub event: LoraEvent,
}

/// One message to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// `msg_…`, stable: derived from the event.
    pub id: String,
    pub event_id: i64,
    pub event: WebhookEvent,
    /// The exact bytes that will be signed and sent (JSON).
    pub body: String,
}

/// What [`WebhookStore::record_webhook_batch`] writes for one LoRA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookBatch {
    pub lora_id: LoraId,
    /// The cursor the batch was read from (a compare-and-set).
    pub from_cursor: i64,
    /// The last event id the batch covers.
    pub to_cursor: i64,
    /// The new `last_progress_at` (unchanged when `None`).
    pub last_progress_at: Option<DateTime<Utc>>,
    pub deliveries: Vec<NewDelivery>,
    pub now: DateTime<Utc>,
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub id: String,
    pub lora_id: LoraId,
    pub owner: UserId,
    pub event: WebhookEvent,
    pub url: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// One attempt, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why it failed (transport error, non-2xx), for people.
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// What happens after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptNext {
    Delivered,
    RetryAt(DateTime<Utc>),
    /// Given up (tried for 24 h).
    Failed,
}

/// A delivery with its attempts, for `GET /api/v1/lora-models/{id}/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub id: String,
    pub event: WebhookEvent,
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: Vec<WebhookAttempt>,
}

#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// The user's signing secret; `fresh` becomes it if the user has none yet.
    async fn webhook_secret(&self, user: UserId, fresh: &str, now: DateTime<Utc>)
    -> Result<String>;

    /// Replaces the user's signing secret with `fresh` (deliveries not yet sent are signed with it).
    async fn rotate_webhook_secret(
        &self,
        user: UserId,
        fresh: &str,
        now: DateTime<Utc>,
    ) -> Result<String>;

    /// The webhook LoRA `lora` was created with.
    async fn lora_webhook(&self, lora: LoraId) -> Result<Option<LoraWebhook>>;

    /// Event-log entries past their LoRA's webhook cursor, oldest first, at most `limit`.
    async fn pending_webhook_events(&self, limit: u32) -> Result<Vec<PendingWebhookEvent>>;

    /// Inserts `batch.deliveries` (due at once) and moves the LoRA's cursor to `batch.to_cursor`,
    /// in one transaction, only if the cursor is still `batch.from_cursor`; `false` (nothing
    /// written) when another writer moved it first.
    async fn record_webhook_batch(&self, batch: &WebhookBatch) -> Result<bool>;

    /// Leases up to `limit` pending deliveries due at `now` (and not leased by anyone else
    /// until after `now`) to `holder` until `lease_until`, oldest due first.
    async fn claim_webhook_deliveries(
        &self,
        holder: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueDelivery>>;

    /// Logs an attempt of delivery `id` and applies `next`, only while `holder` holds its lease
    /// (`false` otherwise: nothing written). Releases the lease.
    async fn record_webhook_attempt(
        &self,
        id: &str,
        holder: &str,
        attempt: &WebhookAttempt,
        next: AttemptNext,
    ) -> Result<bool>;

    /// The LoRA's deliveries, oldest event first, each with its attempts.
    async fn webhook_deliveries_of(&self, lora: LoraId) -> Result<Vec<WebhookDelivery>>;
}
