//! `GET /api/v1/lora-models/{id}/usage`: how often a LoRA was handed to generations, per UTC
//! day (uses are recorded by `POST /api/v1/generation/resolve`, once per generation).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::routes::lora_models::load;
use crate::state::AppState;

const DEFAULT_DAYS: u32 = 30;
const MAX_DAYS: u32 = 366;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Days back, today (UTC) included: 1–366, default 30.
    pub days: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    pub lora_id: Uuid,
    pub days: u32,
    /// Uses within these days.
    pub total: u64,
    /// Uses ever (the library's `usage_count`).
    pub usage_count: u64,
    /// One entry per day, oldest first, days without uses included with 0.
    pub by_day: Vec<DayUsesView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DayUsesView {
    #[schema(value_type = String, example = "2026-11-30")]
    pub day: NaiveDate,
    pub uses: u64,
}

/// Uses of a LoRA per UTC day. Its creator or an admin only.
#[utoipa::path(get, path = "/api/v1/lora-models/{id}/usage", tag = "library", security(("bearer" = [])),
    params(("id" = Uuid, Path), UsageParams),
    responses((status = 200, body = UsageView), (status = 400, description = "invalid_query", body = crate::views::ErrorBody),
        (status = 403, description = "not_owner", body = crate::views::ErrorBody), (status = 404, body = crate::views::ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    q: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<Json<UsageView>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let days = q.days.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("days must be from 1 to {MAX_DAYS}"),
        ));
    }
    let lora = load(&state, &id).await?;
    if lora.creator.id != user.id && !user.is_admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_owner",
            "only the LoRA's creator or an admin can see its usage",
        ));
    }
    let to = state.now().date_naive();
    let from = to - Days::new(u64::from(days - 1));
    let counted = state.repo().uses_by_day(lora.id, from, to).await?;
    let by_day: Vec<DayUsesView> = from
        .iter_days()
        .take_while(|d| *d <= to)
        .map(|day| DayUsesView {
            day,
            uses: counted.iter().find(|c| c.day == day).map_or(0, |c| c.uses),
        })
        .collect();
    Ok(Json(UsageView {
        lora_id: lora.id.0,
        days,
        total: by_day.iter().map(|d| d.uses).sum(),
        usage_count: lora.usage_count,
        by_day,
    }))
}
