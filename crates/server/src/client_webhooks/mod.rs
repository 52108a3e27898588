//! Webhooks to clients, Replicate-style: a create may carry `webhook` (an http(s) URL) and
//! `webhook_events_filter`; the LoRA's event log is the outbox ([`enqueue::enqueue_webhooks`]
//! turns new entries into deliveries) and [`deliver::deliver_webhooks`] POSTs them signed as
//! Standard Webhooks under the owner's secret, retrying with backoff for 24 hours. Both are
//! steppable (one round, `now` passed in); [`run`] loops them.

pub mod deliver;
pub mod enqueue;

use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;

use loraforge_db::NewWebhook;
use loraforge_domain::webhooks::WebhookEvent;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub use deliver::{DeliverReport, deliver_webhooks};
pub use enqueue::{EnqueueReport, enqueue_webhooks};

/// Longest webhook URL taken.
pub const MAX_URL_LEN: usize = 2048;

/// A new signing secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

fn invalid_webhook(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_webhook", message)
        .with("field", "webhook")
}

/// A create's `webhook` and `webhook_events_filter`, checked: `None` without a webhook; a
/// filter without a webhook, an unknown event, a URL that is not http(s), carries credentials
/// or points (literally or through DNS) at a non-public address is 422 `invalid_webhook`.
pub async fn parse_webhook(
    state: &AppState,
    url: Option<&str>,
    filter: Option<&[String]>,
) -> ApiResult<Option<NewWebhook>> {
    let Some(raw) = url.map(str::trim).filter(|u| !u.is_empty()) else {
        if filter.is_some_and(|f| !f.is_empty()) {
            return Err(invalid_webhook(
                "webhook_events_filter needs a webhook URL to deliver to",
            ));
        }
        return Ok(None);
    };
    if raw.len() > MAX_URL_LEN {
        return Err(invalid_webhook(format!(
            "the webhook URL is longer than {MAX_URL_LEN} characters"
        )));
    }
    let parsed = url::Url::parse(raw)
        .map_err(|e| invalid_webhook(format!("the webhook is not a URL: {e}")))?;
    let allow_private = state.settings().client_webhooks.allow_private_addresses;
    loraforge_fetch::vet_url(&parsed, allow_private)
        .await
        .map_err(|why| {
            invalid_webhook(format!(
                "the webhook URL cannot be used: {why}; use a public https:// address"
            ))
        })?;
    let events = match filter {
        None => WebhookEvent::ALL.to_vec(),
        Some(names) => {
            let mut events = Vec::new();
            for name in names {
                let e = WebhookEvent::parse(name).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_webhook",
                        format!(
                            "webhook_events_filter: unknown event {name:?}; use start, progress, \
                             completed, failed, cancelled"
                        ),
                    )
                    .with("field", "webhook_events_filter")
                })?;
                if !events.contains(&e) {
                    events.push(e);
                }
            }
            if events.is_empty() {
                return Err(invalid_webhook(
                    "webhook_events_filter is empty; leave it out to get every event",
                ));
            }
            events
        }
    };
    Ok(Some(NewWebhook {
        url: parsed.to_string(),
        events,
    }))
}

/// Enqueues and delivers every `interval` until `shutdown` resolves. Safe on several replicas:
/// batches are compare-and-set on each LoRA's cursor and deliveries are leased.
pub async fn run(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let every = state.settings().client_webhooks.interval;
    let allow_private = state.settings().client_webhooks.allow_private_addresses;
    let client = match loraforge_fetch::vetted_client(
        allow_private,
        state.settings().client_webhooks.timeout,
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "client webhooks are off: the HTTP client cannot be built");
            return;
        }
    };
    let holder = format!("webhooks-{}", uuid::Uuid::new_v4());
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(every.max(Duration::from_millis(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = interval.tick() => {
                if let Err(e) = enqueue_webhooks(state.repo(), state.now()).await {
                    tracing::warn!(error = %e, "turning LoRA events into webhook deliveries failed");
                }
                let r = deliver_webhooks(state.repo(), &client, allow_private, &holder, state.now()).await;
                if let Some(e) = r.error {
                    tracing::warn!(error = %e, "delivering webhooks failed");
                }
            }
        }
    }
}
