//! Client webhooks (Replicate-style): which events a LoRA's webhook can ask for, which entry of
//! the event log is which event, how progress is coalesced and when a failed delivery is tried
//! again. Pure rules; the outbox and the delivery loop live in the server and the repositories.

use std::time::Duration;

use crate::TrainingStatus;

/// One kind of webhook event a create can select with `webhook_events_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// The LoRA started training (each attempt that starts).
    Start,
    /// Training progress, at most one per LoRA per [`PROGRESS_EVERY`].
    Progress,
    /// The LoRA is completed (trained and validated).
    Completed,
    /// The LoRA failed.
    Failed,
    /// The LoRA was cancelled.
    Cancelled,
}

impl WebhookEvent {
    /// Every event, the default filter (as Replicate's default is every event).
    pub const ALL: [WebhookEvent; 5] = [
        Self::Start,
        Self::Progress,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Progress => "progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The event an entry of the LoRA's event log (`kind`, the status after it) is, if any:
    /// a change to `training` is `start`, to a final status its name, a `progress` entry is
    /// `progress`; everything else (created, queued, validating, description edits) is none.
    pub fn of_log(kind: &str, status: TrainingStatus) -> Option<Self> {
        match (kind, status) {
            ("progress", _) => Some(Self::Progress),
            ("status", TrainingStatus::Training) => Some(Self::Start),
            ("status", TrainingStatus::Completed) => Some(Self::Completed),
            ("status", TrainingStatus::Failed) => Some(Self::Failed),
            ("status", TrainingStatus::Cancelled) => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// A filter as stored: the events' names joined by commas, in [`WebhookEvent::ALL`] order.
pub fn filter_to_text(events: &[WebhookEvent]) -> String {
    WebhookEvent::ALL
        .into_iter()
        .filter(|e| events.contains(e))
        .map(WebhookEvent::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`filter_to_text`]; `None` for an unknown name.
pub fn filter_from_text(text: &str) -> Option<Vec<WebhookEvent>> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(WebhookEvent::parse)
        .collect()
}

/// At most one `progress` delivery per LoRA in this long (by the event log's times).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A delivery not accepted (2xx) within this long of its creation is given up (`failed`).
pub const RETRY_FOR: Duration = Duration::from_secs(24 * 3600);

/// The wait after the `attempts`-th failed attempt (1-based): 5 s doubling (5, 10, 20, 40 s …)
/// up to one hour, so a day holds about 30 attempts.
pub fn retry_delay(attempts: u32) -> Duration {
    const FIRST: u64 = 5;
    const MAX: u64 = 3600;
    let shift = attempts.saturating_sub(1).min(20);
    Duration::from_secs((FIRST << shift).min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_map_to_events() {
        use TrainingStatus::*;
        assert_eq!(
            WebhookEvent::of_log("status", Training),
            Some(WebhookEvent::Start)
        );
        assert_eq!(
            WebhookEvent::of_log("progress", Training),
            Some(WebhookEvent::Progress)
        );
        assert_eq!(
            WebhookEvent::of_log("status", Completed),
            Some(WebhookEvent::Completed)
        );
        assert_eq!(
            WebhookEvent::of_log("status", Failed),
            Some(WebhookEvent::Failed)
        );
        assert_eq!(
            WebhookEvent::of_log("status", Cancelled),
            Some(WebhookEvent::Cancelled)
        );
        for (kind, status) in [
            ("created", Pending),
            ("status", Queued),
            ("status", Validating),
            ("updated", Completed),
        ] {
            assert_eq!(
                WebhookEvent::of_log(kind, status),
                None,
                "{kind} {status:?}"
            );
        }
    }

    #[test]
    fn filters_round_trip_in_a_fixed_order() {
        let text = filter_to_text(&[WebhookEvent::Failed, WebhookEvent::Start]);
        assert_eq!(text, "start,failed");
        assert_eq!(
            filter_from_text(&text),
            Some(vec![WebhookEvent::Start, WebhookEvent::Failed])
        );
        assert_eq!(filter_from_text(""), Some(vec![]));
        assert_eq!(filter_from_text("start,logs"), None);
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        let waits: Vec<u64> = (1..=6).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160]);
        assert_eq!(retry_delay(11).as_secs(), 3600);
        assert_eq!(retry_delay(u32::MAX).as_secs(), 3600);
        assert_eq!(retry_delay(0).as_secs(), 5);
    }
}
