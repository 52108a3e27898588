//! `/api/v1/me…`: the caller's own account (display name) and limits.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use serde::Deserialize;
use utoipa::ToSchema;

use loraforge_db::UserProfile;
use loraforge_domain::{CreatorRef, DailyWindow, DisplayName, MonthlyWindow};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, body_error};
use crate::state::AppState;
use crate::views::{DatasetQuotaView, LimitsView, MeView};

/// Body of `PATCH /api/v1/me`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMe {
    /// 1–50 characters, no `@` and no control characters; `null` goes back to the derived name.
    #[schema(min_length = 1, max_length = 50)]
    pub display_name: Option<String>,
}

fn me_view(user: &AuthUser, profile: Option<UserProfile>) -> MeView {
    let (email, chosen) = match profile {
        Some(p) => (p.email.or_else(|| user.email.clone()), p.display_name),
        None => (user.email.clone(), None),
    };
    let creator = CreatorRef {
        id: user.id,
        email: email.clone(),
        display_name: chosen.clone(),
    };
    MeView {
        id: user.id.0,
        email,
        display_name: creator.public_name(),
        display_name_chosen: chosen.is_some(),
    }
}

/// Your account: your e-mail (only you see it) and the name the library shows for you.
#[utoipa::path(get, path = "/api/v1/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 401, body = crate::views::ErrorBody)))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<MeView>> {
    let profile = state.repo().user_profile(user.id).await?;
    Ok(Json(me_view(&user, profile)))
}

/// Sets the name the library shows for you instead of your e-mail.
#[utoipa::path(patch, path = "/api/v1/me", tag = "account", security(("bearer" = [])),
    request_body = PatchMe,
    responses((status = 200, body = MeView), (status = 400, description = "invalid_json, invalid_display_name", body = crate::views::ErrorBody),
        (status = 401, body = crate::views::ErrorBody),
        (status = 413, description = "payload_too_large", body = crate::views::ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<MeView>> {
    let body = body.map_err(body_error)?;
    let req: PatchMe = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("{e}; send {{\"display_name\": \"Your name\"}} (or null to reset it)"),
        )
    })?;
    let name = req
        .display_name
        .as_deref()
        .map(DisplayName::parse)
        .transpose()
        .map_err(|e| {
            ApiError::bad_request("invalid_display_name", e.to_string())
                .with("field", "display_name")
        })?;
    let profile = state
        .repo()
        .set_display_name(
            user.id,
            user.email.as_deref(),
            name.as_ref().map(DisplayName::as_str),
            state.now(),
        )
        .await?;
    // Listings carry creators' names.
    state.library_changed();
    Ok(Json(me_view(&user, Some(profile))))
}

/// How many LoRAs you have used this month, how many datasets today, and when each resets.
#[utoipa::path(get, path = "/api/v1/me/limits", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = LimitsView), (status = 401, body = crate::views::ErrorBody)))]
pub async fn limits(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<LimitsView>> {
    let now = state.now();
    let window = MonthlyWindow::containing(now);
    let used = state.repo().count_monthly(user.id, window).await?;
    let day = DailyWindow::containing(now);
    let usage = state.repo().dataset_usage(user.id, day).await?;
    let l = state.settings().limits;
    let q = state.settings().dataset_quota;
    Ok(Json(LimitsView {
        used,
        limit: l.monthly_loras,
        remaining: l.monthly_loras.saturating_sub(used),
        resets_at: window.end,
        concurrent_jobs: l.concurrent_jobs,
        creates_per_minute: l.creates_per_minute,
        datasets: DatasetQuotaView {
            datasets_used: usage.datasets,
            datasets_limit: q.datasets_per_day,
            bytes_used: usage.bytes,
            bytes_limit: q.bytes_per_day,
            resets_at: day.end,
        },
    }))
}
