//! `/api/v1/me/…`: the caller's own limits.

use axum::Json;
use axum::extract::State;

use loraforge_domain::MonthlyWindow;

use crate::auth::AuthUser;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::views::LimitsView;

/// How many LoRAs you have used this month and when the count resets.
#[utoipa::path(get, path = "/api/v1/me/limits", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = LimitsView), (status = 401, body = crate::views::ErrorBody)))]
pub async fn limits(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<LimitsView>> {
    let window = MonthlyWindow::containing(state.now());
    let used = state.repo().count_monthly(user.id, window).await?;
    let l = state.settings().limits;
    Ok(Json(LimitsView {
        used,
        limit: l.monthly_loras,
        remaining: l.monthly_loras.saturating_sub(used),
        resets_at: window.end,
        concurrent_jobs: l.concurrent_jobs,
        creates_per_minute: l.creates_per_minute,
    }))
}
