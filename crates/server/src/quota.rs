//! The daily dataset quota at the edge (issue 9 item 5): checked before any image is read,
//! downloaded or stored, and again (atomically) when the dataset is recorded.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};

use loraforge_domain::{DailyWindow, QuotaExceeded, QuotaKind, UserId};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Refuses (429 `dataset_quota_reached`) a user who cannot store any dataset today. A failing
/// count only skips this shortcut: the insert checks again under its lock.
pub async fn check_dataset_quota(state: &AppState, user: UserId) -> ApiResult<()> {
    let now = state.now();
    let window = DailyWindow::containing(now);
    match state.repo().dataset_usage(user, window).await {
        Ok(usage) => state
            .settings()
            .dataset_quota
            .admits(usage, 0)
            .map_err(|e| dataset_quota_reached(e, window, now)),
        Err(e) => {
            tracing::warn!(error = %e, "dataset usage count failed; the insert will check again");
            Ok(())
        }
    }
}

/// 429 `dataset_quota_reached`: which limit (`quota`: `datasets` or `bytes`), the limit, the
/// usage and when the day's quota resets.
pub fn dataset_quota_reached(
    e: QuotaExceeded,
    window: DailyWindow,
    now: DateTime<Utc>,
) -> ApiError {
    let retry = u64::try_from((window.end - now).num_seconds())
        .unwrap_or(0)
        .max(1);
    let message = match e.kind {
        QuotaKind::Datasets => format!(
            "You've stored {} of your {} datasets for today; the quota resets at midnight UTC.",
            e.used, e.limit
        ),
        QuotaKind::Bytes => format!(
            "This dataset would pass your daily storage quota ({} of {} bytes used today); the quota resets at midnight UTC.",
            e.used, e.limit
        ),
    };
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "dataset_quota_reached",
        message,
    )
    .with("quota", e.kind.as_str())
    .with("limit", e.limit)
    .with("used", e.used)
    .with("resets_at", window.end.to_rfc3339())
    .retry(retry)
}
