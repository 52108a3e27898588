//! The outbox step: new entries of the event logs of LoRAs with a webhook become deliveries.
//! Each LoRA's entries are recorded as one batch that moves its cursor in the same transaction,
//! so a crash between reading and recording repeats the read, never a delivery.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use loraforge_db::{LoraEvent, NewDelivery, PendingWebhookEvent, Repository, WebhookBatch};
use loraforge_domain::webhooks::{PROGRESS_EVERY, WebhookEvent};
use loraforge_domain::{LoraModel, TrainingStatus};

use crate::views::{MoneyView, StatusView};

/// Event-log entries read per round.
pub const BATCH: u32 = 500;

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnqueueReport {
    /// Deliveries created.
    pub enqueued: usize,
    /// Entries looked at (selected or not).
    pub events: usize,
}

/// The body of a delivery: the LoRA as the API shows its status, and the event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookPayload {
    /// start, progress, completed, failed or cancelled.
    pub event: String,
    /// The event-log entry this delivery is for (the `id` of `GET …/events`).
    pub event_id: i64,
    /// When the event happened.
    pub event_at: DateTime<Utc>,
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = String)]
    pub training_status: TrainingStatus,
    pub stage: Option<String>,
    pub progress: u8,
    pub estimated_remaining: Option<u32>,
    pub error: Option<String>,
    pub status_message: Option<String>,
    pub file_size: Option<u64>,
    pub training_cost: MoneyView,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub urls: PayloadUrls,
}

/// Where to read more (paths of this API).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PayloadUrls {
    pub get: String,
    pub status: String,
    pub webhooks: String,
}

/// The body for `event` of `lora` (the LoRA as it is when the delivery is made).
pub fn payload(lora: &LoraModel, kind: WebhookEvent, event: &LoraEvent) -> WebhookPayload {
    let s = StatusView::from(lora);
    let base = format!("/api/v1/lora-models/{}", lora.id);
    WebhookPayload {
        event: kind.as_str().to_owned(),
        event_id: event.id,
        event_at: event.at,
        id: lora.id.0,
        name: lora.name.clone(),
        description: lora.description.clone(),
        training_status: lora.status,
        stage: s.stage,
        progress: s.progress,
        estimated_remaining: s.estimated_remaining,
        error: s.error,
        status_message: s.status_message,
        file_size: lora.file_size,
        training_cost: lora.training_cost.into(),
        created_at: lora.created_at,
        updated_at: lora.updated_at,
        completed_at: lora.completed_at,
        urls: PayloadUrls {
            status: format!("{base}/status"),
            webhooks: format!("{base}/webhooks"),
            get: base,
        },
    }
}

/// The message id of the delivery for `event`: the same on every attempt and every replica.
pub fn message_id(event: &LoraEvent) -> String {
    format!("msg_{}_{}", event.lora_id.0.simple(), event.id)
}

/// One round: reads up to [`BATCH`] new entries, selects those the webhook's filter asks for
/// (`progress` at most once per LoRA per [`PROGRESS_EVERY`] of event time) and records them,
/// one LoRA at a time, with its cursor. A batch another replica recorded first is skipped.
pub async fn enqueue_webhooks(
    repo: &dyn Repository,
    now: DateTime<Utc>,
) -> loraforge_db::Result<EnqueueReport> {
    let pending = repo.pending_webhook_events(BATCH).await?;
    let mut report = EnqueueReport {
        events: pending.len(),
        ..EnqueueReport::default()
    };
    // Group by LoRA, keeping each LoRA's entries in id order.
    let mut groups: Vec<Vec<PendingWebhookEvent>> = Vec::new();
    for p in pending {
        match groups
            .iter_mut()
            .find(|g| g[0].webhook.lora_id == p.webhook.lora_id)
        {
            Some(g) => g.push(p),
            None => groups.push(vec![p]),
        }
    }
    let every = chrono::Duration::from_std(PROGRESS_EVERY).unwrap_or_default();
    for group in groups {
        let hook = group[0].webhook.clone();
        let Some(lora) = repo.get_lora(hook.lora_id).await? else {
            continue;
        };
        let mut last_progress = hook.last_progress_at;
        let mut progress_moved = None;
        let mut deliveries = Vec::new();
        for p in &group {
            let ev = &p.event;
            let Some(kind) = WebhookEvent::of_log(&ev.kind, ev.status) else {
                continue;
            };
            if !hook.events.contains(&kind) {
                continue;
            }
            if kind == WebhookEvent::Progress {
                if last_progress.is_some_and(|last| ev.at < last + every) {
                    continue;
                }
                last_progress = Some(ev.at);
                progress_moved = Some(ev.at);
            }
            let body = serde_json::to_string(&payload(&lora, kind, ev))
                .map_err(|e| loraforge_db::DbError::Corrupt(format!("webhook body: {e}")))?;
            deliveries.push(NewDelivery {
                id: message_id(ev),
                event_id: ev.id,
                event: kind,
                body,
            });
        }
        let batch = WebhookBatch {
            lora_id: hook.lora_id,
            from_cursor: hook.event_cursor,
            to_cursor: group.last().map_or(hook.event_cursor, |p| p.event.id),
            last_progress_at: progress_moved,
            deliveries,
            now,
        };
        if repo.record_webhook_batch(&batch).await? {
            report.enqueued += batch.deliveries.len();
        }
    }
    Ok(report)
}
