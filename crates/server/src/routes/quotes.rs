//! `POST /api/v1/quotes`: what a training would take and cost on each backend, before creating
//! it (`POST /api/v1/lora-models?dry_run=true` answers the same for a full create body).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use serde::Deserialize;
use uuid::Uuid;

use loraforge_domain::ParamsInput;

use crate::auth::AuthUser;
use crate::body;
use crate::error::{ApiError, ApiResult, body_error};
use crate::quotes::{QuotesView, quote};
use crate::routes::lora_models::{check_params, params_body_error};
use crate::state::AppState;
use crate::views::ErrorBody;

/// Body of `POST /api/v1/quotes`: the create body, of which only `params` matters (a quote
/// depends on the training, not on its name or images), so `name`, `description` and
/// `dataset_id` may be left out and are not checked.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    /// Ignored.
    pub name: Option<String>,
    /// Ignored.
    pub description: Option<String>,
    /// Ignored.
    pub dataset_id: Option<Uuid>,
    /// Training parameters as for a create; anything left out takes the default.
    pub params: Option<ParamsInput>,
}

/// The expected training time and cost of these parameters on each configured backend, in the
/// router's order: from the recorded runs of similar trainings (same backend, resolution bucket)
/// or, without any, from the documented fallback table (README, "Quotes").
#[utoipa::path(post, path = "/api/v1/quotes", request_body = QuoteBody, tag = "library",
    security(("bearer" = [])),
    responses((status = 200, body = QuotesView),
        (status = 400, description = "invalid_json, invalid_request or invalid_params (with `field`)", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 422, description = "base_model_not_allowed or incompatible_params", body = ErrorBody)))]
pub async fn create_quote(
    State(state): State<AppState>,
    _user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<QuotesView>> {
    let body = body.map_err(body_error)?;
    let value = body::json_value(&body)?;
    let req: QuoteBody = body::from_value(value).map_err(|e| match e.top_field() {
        Some("params") => params_body_error(&state, &e),
        _ if e.message.starts_with("unknown field") => ApiError::bad_request(
            "invalid_request",
            format!(
                "unknown field {:?}; allowed fields are name, description, dataset_id, params",
                e.named_field().unwrap_or_default()
            ),
        ),
        _ => ApiError::bad_request(
            "invalid_request",
            format!("the body must be a create body: {}", e.message),
        ),
    })?;
    let params = check_params(&state, req.params.as_ref())?;
    Ok(Json(quote(&state, &params).await?))
}
