//! `POST /api/v1/lora-models/{id}/reports`: anyone signed in reports a LoRA they can see, with a
//! reason (`domain::moderation::ReportReason`) and, for `other` required, their own words. One
//! open report per person and LoRA (409 `already_reported`); reporting your own LoRA is refused
//! (400 `own_lora`: hide it from nobody, change it instead); reports are rate limited per user
//! (`ModerationSettings::reports_per_minute`). A LoRA reaching
//! `ModerationSettings::alert_after_reports` open reports raises the `lora_reported` operator
//! alert. Admins review reports in `routes/admin_reports.rs`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use loraforge_db::{Filed, NewReport, Report};
use loraforge_domain::moderation::{REPORTED_ALERT_KIND, ReportInputError};
use loraforge_domain::{ReportInput, ReportReason};

use crate::auth::AuthUser;
use crate::body;
use crate::error::{ApiError, ApiResult, body_error, invalid_text};
use crate::routes::lora_models::load_visible;
use crate::state::AppState;
use crate::views::ErrorBody;

/// Body of `POST /api/v1/lora-models/{id}/reports`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    /// sexual_content, minor, violence, hate, impersonation, copyright, spam or other.
    #[schema(example = "copyright")]
    pub reason: String,
    /// What is wrong, in your words: at most 1,000 characters; required for `other`.
    #[schema(max_length = 1000)]
    pub details: Option<String>,
}

/// One report of a LoRA.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportView {
    pub id: i64,
    pub lora_id: Uuid,
    pub reporter_id: Uuid,
    #[schema(value_type = String, example = "copyright")]
    pub reason: ReportReason,
    pub details: Option<String>,
    /// `open` or `resolved`.
    pub status: String,
    /// `hidden` (the LoRA was hidden) or `dismissed`, once resolved.
    pub resolution: Option<String>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The admin (user id) who resolved it.
    pub resolved_by: Option<Uuid>,
}

impl From<&Report> for ReportView {
    fn from(r: &Report) -> Self {
        Self {
            id: r.id,
            lora_id: r.lora_id.0,
            reporter_id: r.reporter.0,
            reason: r.reason,
            details: r.details.clone(),
            status: if r.is_open() { "open" } else { "resolved" }.to_owned(),
            resolution: r.resolution.map(|x| x.as_str().to_owned()),
            created_at: r.created_at,
            resolved_at: r.resolved_at,
            resolved_by: r.resolved_by.map(|u| u.0),
        }
    }
}

/// The 400 for a report whose reason or details break their rules.
fn report_input_error(e: &ReportInputError) -> ApiError {
    match e {
        ReportInputError::UnknownReason(_) => {
            ApiError::bad_request("invalid_reason", e.to_string()).with(
                "allowed",
                ReportReason::ALL
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>(),
            )
        }
        ReportInputError::DetailsRequired => {
            ApiError::bad_request("details_required", e.to_string())
        }
        ReportInputError::Details(t) => invalid_text("invalid_details", t),
    }
}

/// Reports a LoRA to the admins. Hidden LoRAs are 404 (as everywhere for non-owners).
#[utoipa::path(post, path = "/api/v1/lora-models/{id}/reports", request_body = ReportBody, tag = "moderation",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 201, body = ReportView),
        (status = 400, description = "invalid_json, invalid_request, invalid_reason (with `allowed`), details_required, invalid_details or own_lora", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "already_reported: you have an open report of this LoRA (with `report_id`)", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 429, description = "rate_limited (with Retry-After)", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ReportView>)> {
    let body = body.map_err(body_error)?;
    let req: ReportBody = body::from_value(body::json_value(&body)?).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "send {{\"reason\": \"…\", \"details\": \"…\"}} (details optional except for `other`): {}",
                e.message
            ),
        )
    })?;
    let input = ReportInput::parse(&req.reason, req.details.as_deref())
        .map_err(|e| report_input_error(&e))?;
    let lora = load_visible(&state, &id, &user).await?;
    if lora.creator.id == user.id {
        return Err(ApiError::bad_request(
            "own_lora",
            "you cannot report your own LoRA; edit or cancel it instead",
        ));
    }
    let now = state.now();
    if let Err(wait) = state.report_limiter().check(user.id, now) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many reports; at most {} per minute. Try again in {wait} s",
                state.settings().moderation.reports_per_minute
            ),
        )
        .retry(wait));
    }
    let filed = state
        .repo()
        .file_report(&NewReport {
            lora_id: lora.id,
            reporter: user.id,
            reason: input.reason,
            details: input.details,
            now,
        })
        .await?;
    match filed {
        Filed::AlreadyOpen(open) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_reported",
            "you already reported this LoRA and an admin has not reviewed it yet",
        )
        .with("report_id", open.id)),
        Filed::Created {
            report,
            open_reports,
        } => {
            tracing::info!(lora_id = %lora.id, report = report.id, reason = %report.reason, open_reports, "LoRA reported");
            let threshold = state.settings().moderation.alert_after_reports;
            if threshold > 0 && open_reports >= threshold {
                // The report is stored; an alert that fails to record is logged, not the
                // reporter's problem (the admin queue shows the report either way).
                let message = format!(
                    "LoRA \"{}\" ({}) has {open_reports} open reports; review them at /api/v1/admin/reports",
                    lora.name, lora.id
                );
                if let Err(e) = state
                    .repo()
                    .record_alert(REPORTED_ALERT_KIND, &lora.id.to_string(), &message, now)
                    .await
                {
                    tracing::error!(error = %e, lora_id = %lora.id, "recording the lora_reported alert failed");
                }
            }
            Ok((StatusCode::CREATED, Json(ReportView::from(&report))))
        }
    }
}
