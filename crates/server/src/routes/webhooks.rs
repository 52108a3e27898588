//! `POST /api/v1/webhooks/replicate`: Replicate tells us a training changed
//! (`start`, `completed`, …; `shared/research/api-contracts.md` §3).
//!
//! The delivery is only a nudge: once its Standard Webhooks signature (`crate::webhook`) checks
//! out under `LORAFORGE_REPLICATE_WEBHOOK_SECRET`, the job engine of this process observes the
//! `replicate` backend's runs at its next tick, which comes at once, without waiting for the
//! backend's poll interval (`LORAFORGE_REPLICATE_OBSERVE_SECS`); it reads the training's state
//! from Replicate's API as its polling would (the body is never trusted for an outcome, so a
//! forged or reordered delivery cannot settle a run). The nudge is also recorded in the store
//! (`NudgeStore`), so the engine of every other replica — which may be the one watching the
//! training — observes the backend at its next tick too. Deliveries are deduplicated by
//! `webhook-id` (a retry keeps its id): a replay
//! or duplicate is answered 200 and does nothing. Not behind user auth: the signature is the
//! credential.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Serialize;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::ErrorBody;
use crate::webhook::{self, Delivery, WebhookError};

/// The backend whose runs a Replicate delivery is about (its name in `LORAFORGE_BACKENDS`).
pub const REPLICATE_BACKEND: &str = "replicate";

/// Largest webhook body taken, bytes (a Training object with its logs; Replicate's logs can be
/// long, the rest is small).
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;

/// The answer to a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookAnswer {
    pub received: bool,
    /// This `webhook-id` was taken before; nothing was done this time.
    pub duplicate: bool,
}

/// Takes a signed Replicate webhook and makes the job engine observe the Replicate runs now.
#[utoipa::path(post, path = "/api/v1/webhooks/replicate", tag = "webhooks",
    params(
        ("webhook-id" = Option<String>, Header, description = "the delivery's id (the same on retries)"),
        ("webhook-timestamp" = Option<String>, Header, description = "Unix seconds when it was signed"),
        ("webhook-signature" = Option<String>, Header, description = "space-separated `v1,<base64 HMAC-SHA256>` entries"),
    ),
    request_body(content = Object, content_type = "application/json", description = "the Training object, as Replicate sends it"),
    responses((status = 200, body = WebhookAnswer),
        (status = 400, description = "invalid_json: signed, but not a JSON object", body = ErrorBody),
        (status = 401, description = "invalid_signature, or stale_webhook (timestamp more than 5 minutes from now)", body = ErrorBody),
        (status = 404, description = "webhook_not_configured: no Replicate webhook secret is set", body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn replicate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<WebhookAnswer>> {
    let Some(key) = state.settings().replicate_webhook_key.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "webhook_not_configured",
            "Replicate webhooks are not taken here: set LORAFORGE_REPLICATE_WEBHOOK_SECRET to the account's \
             webhook secret (GET /v1/webhooks/default/secret)",
        ));
    };
    let body = body.map_err(crate::error::body_error)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let delivery = Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    };
    let id = webhook::verify(key, delivery, &body, state.now()).map_err(|e| match e {
        WebhookError::InvalidSignature(why) => {
            tracing::warn!(why, "refused a Replicate webhook");
            ApiError::unauthorized("invalid_signature", why)
        }
        WebhookError::Stale { .. } => {
            tracing::warn!(error = %e, "refused a stale Replicate webhook");
            ApiError::unauthorized(
                "stale_webhook",
                format!(
                    "{e}; replays are refused (check this server's clock if deliveries are fresh)"
                ),
            )
        }
    })?;
    let training: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the webhook body is not a JSON object: {e}"),
            )
        })?;
    let text = |k: &str| training.get(k).and_then(|v| v.as_str()).unwrap_or("-");
    if !state.webhook_seen().first_time(id, state.now()) {
        tracing::info!(
            webhook_id = id,
            training = text("id"),
            "a Replicate webhook again; ignored"
        );
        return Ok(Json(WebhookAnswer {
            received: true,
            duplicate: true,
        }));
    }
    tracing::info!(
        webhook_id = id,
        training = text("id"),
        status = text("status"),
        "Replicate webhook"
    );
    // For every replica's engine (the run may be another one's), then this one's at once.
    if let Err(e) = state
        .repo()
        .nudge_backend(REPLICATE_BACKEND, state.now())
        .await
    {
        tracing::warn!(error = %e, "recording the webhook's nudge failed; other replicas will see the change by polling");
    }
    state.nudge_engine(REPLICATE_BACKEND);
    Ok(Json(WebhookAnswer {
        received: true,
        duplicate: false,
    }))
}
