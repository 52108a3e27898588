//! Admin routes. `POST /api/v1/admin/lora-models/{id}/review`: PRD 2's Phase 1 manual review of
//! a LoRA waiting in `validating` for a person (its checks done, no scoring model, no
//! auto-approval: stage `awaiting_review`). The queue of such LoRAs is the library listing
//! with `awaiting_review=true` (`routes/lora_models.rs`).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use loraforge_db::EventDetail;
use loraforge_domain::validation::AWAITING_REVIEW;
use loraforge_domain::{StatusEvent, TrainingStatus};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::routes::lora_models::load;
use crate::state::AppState;
use crate::views::{ErrorBody, StatusView};

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

/// Body of a review.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    pub decision: Decision,
    /// Why, shown to the creator on a rejection (at most 1000 characters).
    pub reason: Option<String>,
}

/// Approves (→ `completed`) or rejects (→ `failed`, not counted toward the monthly limit) a LoRA
/// waiting for review (`validating`, stage `awaiting_review`: listed by
/// `GET /api/v1/lora-models?awaiting_review=true`). Admins only.
#[utoipa::path(post, path = "/api/v1/admin/lora-models/{id}/review", request_body = ReviewBody, tag = "admin",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = StatusView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "not_in_review", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody)))]
pub async fn review(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    body: Result<Json<ReviewBody>, JsonRejection>,
) -> ApiResult<Json<StatusView>> {
    if !user.is_admin {
        return Err(ApiError::forbidden("only admins can review LoRAs"));
    }
    let Json(body) = body.map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "{}; send {{\"decision\": \"approve\" | \"reject\", \"reason\": \"…\"}}",
                e.body_text()
            ),
        )
    })?;
    let reason = body
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`reason` is limited to 1000 characters",
        ));
    }
    let lora = load(&state, &id).await?;
    if !lora.awaits_review() {
        let why = if lora.status == TrainingStatus::Validating {
            "the LoRA's automatic checks have not finished".to_owned()
        } else {
            format!("the LoRA is {}", lora.status)
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_in_review",
            format!(
                "{why}; only LoRAs waiting for review (`validating`, stage `{AWAITING_REVIEW}`) can be reviewed"
            ),
        )
        .with("training_status", lora.status.as_str())
        .with("stage", lora.progress.stage.clone()));
    }
    let (event, detail) = match body.decision {
        Decision::Approve => (
            StatusEvent::Complete,
            EventDetail {
                validation_passed: Some(true),
                ..EventDetail::default()
            },
        ),
        Decision::Reject => {
            let error = match &reason {
                Some(r) => format!("Quality validation failed: rejected in review: {r}"),
                None => "Quality validation failed: rejected in review".to_owned(),
            };
            (
                StatusEvent::Fail,
                EventDetail {
                    error: Some(error),
                    validation_passed: Some(false),
                    ..EventDetail::default()
                },
            )
        }
    };
    let lora = state
        .repo()
        .apply_event(lora.id, event, detail, state.now())
        .await?;
    state.notify_changed(lora.id);
    crate::credits::settle_lora(state.repo(), &lora, state.now()).await;
    tracing::info!(lora = %lora.id, admin = %user.id, decision = ?body.decision, "LoRA reviewed");
    Ok(Json(StatusView::from(&lora)))
}
