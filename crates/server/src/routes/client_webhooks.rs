//! Client webhooks' routes: your signing secret (`/api/v1/me/webhook-secret`, made on first
//! use, rotated on request) and a LoRA's deliveries with their attempts
//! (`/api/v1/lora-models/{id}/webhooks`, its creator or an admin).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use loraforge_db::WebhookDelivery;

use crate::auth::AuthUser;
use crate::client_webhooks::new_secret;
use crate::error::{ApiError, ApiResult};
use crate::routes::lora_models::load_visible;
use crate::state::AppState;
use crate::views::ErrorBody;

/// Your webhook signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecretView {
    /// `whsec_` and the base64 of 32 random bytes; the HMAC-SHA256 key is the decoded bytes.
    pub key: String,
}

/// The secret your LoRAs' webhooks are signed with (Standard Webhooks): made on first use, the
/// same afterwards until rotated.
#[utoipa::path(get, path = "/api/v1/me/webhook-secret", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = WebhookSecretView), (status = 401, body = ErrorBody)))]
pub async fn secret(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<WebhookSecretView>> {
    let key = state
        .repo()
        .webhook_secret(user.id, &new_secret(), state.now())
        .await?;
    Ok(Json(WebhookSecretView { key }))
}

/// Replaces your webhook secret; deliveries sent from now on (retries included) are signed with
/// the new one.
#[utoipa::path(post, path = "/api/v1/me/webhook-secret/rotate", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = WebhookSecretView), (status = 401, body = ErrorBody)))]
pub async fn rotate(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<WebhookSecretView>> {
    let key = state
        .repo()
        .rotate_webhook_secret(user.id, &new_secret(), state.now())
        .await?;
    tracing::info!(user_id = %user.id, "webhook secret rotated");
    Ok(Json(WebhookSecretView { key }))
}

/// One attempt to deliver a webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAttemptView {
    /// 1, 2, …
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why it was not delivered.
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One webhook message, with every attempt to deliver it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryView {
    /// The `webhook-id` header: the same on every attempt.
    pub id: String,
    /// start, progress, completed, failed or cancelled.
    pub event: String,
    pub url: String,
    /// pending (will be tried, again), delivered (a 2xx answer) or failed (given up after 24 h).
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: Vec<WebhookAttemptView>,
}

/// A LoRA's webhook deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveriesView {
    /// The URL the LoRA was created with; null without a webhook.
    pub webhook: Option<String>,
    /// The events it asked for.
    pub events: Vec<String>,
    /// Oldest event first.
    pub items: Vec<WebhookDeliveryView>,
}

impl From<WebhookDelivery> for WebhookDeliveryView {
    fn from(d: WebhookDelivery) -> Self {
        Self {
            id: d.id,
            event: d.event.as_str().to_owned(),
            url: d.url,
            state: d.state,
            created_at: d.created_at,
            next_attempt_at: d.next_attempt_at,
            finished_at: d.finished_at,
            attempts: d
                .attempts
                .into_iter()
                .map(|a| WebhookAttemptView {
                    attempt: a.attempt,
                    at: a.at,
                    status_code: a.status_code,
                    error: a.error,
                    duration_ms: a.duration_ms,
                })
                .collect(),
        }
    }
}

/// The LoRA's webhook deliveries and their attempts. Its creator or an admin.
#[utoipa::path(get, path = "/api/v1/lora-models/{id}/webhooks", tag = "library", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = WebhookDeliveriesView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookDeliveriesView>> {
    let lora = load_visible(&state, &id, &user).await?;
    if lora.creator.id != user.id && !user.is_admin {
        return Err(ApiError::forbidden(
            "only the LoRA's creator or an admin can see its webhook deliveries",
        ));
    }
    let hook = state.repo().lora_webhook(lora.id).await?;
    let items = state.repo().webhook_deliveries_of(lora.id).await?;
    Ok(Json(WebhookDeliveriesView {
        events: hook
            .as_ref()
            .map(|h| h.events.iter().map(|e| e.as_str().to_owned()).collect())
            .unwrap_or_default(),
        webhook: hook.map(|h| h.url),
        items: items.into_iter().map(Into::into).collect(),
    }))
}
