//! Operator alerts as rows (issue 11): dedup within a cooldown, acknowledgement, and per-channel
//! delivery state for the deliverer (`loraforge_server::alerts::deliver_alerts`).
//!
//! Dedup rule (both engines): an alert of the same `(kind, subject)` whose open row (not
//! acknowledged) was first seen less than `cooldown` ago has its `count` bumped and `last_seen`
//! (and message) updated instead of a new row; after the cooldown, or once acknowledged, the next
//! occurrence is a new row, which the deliverer sends again. So a condition that persists is
//! re-sent at most once per cooldown. [`crate::Repository::record_alert`] goes through the same
//! path with the repository's configured cooldown ([`AlertStore::set_alert_cooldown`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::Result;

/// The default dedup cooldown (`LORAFORGE_ALERT_COOLDOWN`).
pub const DEFAULT_ALERT_COOLDOWN: Duration = Duration::from_secs(3600);

/// One alert row with its dedup and acknowledgement state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRecord {
    pub id: i64,
    pub kind: String,
    pub subject: String,
    /// The latest occurrence's message.
    pub message: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Occurrences folded into this row (1 for a fresh one).
    pub count: i64,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
}

/// What [`AlertStore::raise_alert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub id: i64,
    /// `true` for a new row (to be delivered), `false` when an open one was bumped.
    pub new: bool,
    pub count: i64,
}

/// A page of alerts, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertQuery {
    /// Only alerts not acknowledged.
    pub open_only: bool,
    /// Only ids below this one (the previous page's last id).
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// One delivery channel's state for an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertDelivery {
    pub alert_id: i64,
    pub channel: String,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub gave_up_at: Option<DateTime<Utc>>,
}

/// An alert due on a channel, with the attempts made so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueAlertDelivery {
    pub alert: AlertRecord,
    pub attempts: u32,
}

/// The result of one delivery attempt, for [`AlertStore::record_delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryAttempt {
    Delivered,
    /// Failed; try again at `retry_at`.
    Failed {
        error: String,
        retry_at: DateTime<Utc>,
    },
    /// Failed for the last time; no more tries.
    GaveUp {
        error: String,
    },
}

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Sets the cooldown [`crate::Repository::record_alert`] uses (default 1 h).
    fn set_alert_cooldown(&self, cooldown: Duration);

    /// The cooldown [`crate::Repository::record_alert`] uses.
    fn alert_cooldown(&self) -> Duration;

    /// Records an occurrence of an alert, deduplicated (see the module docs). Atomic per
    /// `(kind, subject)`: concurrent raises make one row.
    async fn raise_alert(
        &self,
        kind: &str,
        subject: &str,
        message: &str,
        cooldown: Duration,
        now: DateTime<Utc>,
    ) -> Result<Raised>;

    /// Alerts newest first (by id), paged.
    async fn list_alerts(&self, query: AlertQuery) -> Result<Vec<AlertRecord>>;

    async fn get_alert(&self, id: i64) -> Result<Option<AlertRecord>>;

    /// Acknowledges an alert (the first acknowledgement is kept); `None` when there is no such
    /// alert.
    async fn ack_alert(&self, id: i64, by: &str, now: DateTime<Utc>)
    -> Result<Option<AlertRecord>>;

    /// Alerts first seen at or after `since`, not acknowledged, that `channel` has neither
    /// delivered nor given up on and whose next try is due by `now`; oldest first, at most
    /// `limit`.
    async fn due_deliveries(
        &self,
        channel: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueAlertDelivery>>;

    /// Records one attempt to deliver `alert_id` on `channel` (counts an attempt).
    async fn record_delivery(
        &self,
        alert_id: i64,
        channel: &str,
        attempt: &DeliveryAttempt,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Every channel's state for an alert, by channel name.
    async fn alert_deliveries(&self, alert_id: i64) -> Result<Vec<AlertDelivery>>;
}

/// The cooldown as a chrono duration (saturating).
pub(crate) fn chrono_cooldown(cooldown: Duration) -> chrono::Duration {
    chrono::Duration::from_std(cooldown).unwrap_or(chrono::Duration::MAX)
}

/// The split of [`DeliveryAttempt`] into the row's columns:
/// `(delivered, error, next_attempt_at, gave_up)`.
pub(crate) fn attempt_columns(
    attempt: &DeliveryAttempt,
) -> (bool, Option<&str>, Option<DateTime<Utc>>, bool) {
    match attempt {
        DeliveryAttempt::Delivered => (true, None, None, false),
        DeliveryAttempt::Failed { error, retry_at } => (false, Some(error), Some(*retry_at), false),
        DeliveryAttempt::GaveUp { error } => (false, Some(error), None, true),
    }
}
