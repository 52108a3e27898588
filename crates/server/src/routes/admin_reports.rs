//! Moderation for admins: the report queue (`GET /api/v1/admin/reports`), hiding and unhiding a
//! LoRA (`POST /api/v1/admin/lora-models/{id}/hide` and `…/unhide`) and dismissing a report
//! (`POST /api/v1/admin/reports/{id}/dismiss`). Admins only (403 otherwise).
//!
//! Hiding never deletes: the LoRA leaves the library, search and every public page (404 to
//! others), its owner still sees it with the reason, and its open reports are resolved `hidden`.
//! Each call is idempotent: hiding a hidden LoRA keeps the first hide, unhiding a visible one and
//! dismissing a resolved report change nothing; all answer 200 with the current state. A hide
//! empties this process's library cache at once (`AppState::notify_changed`); other replicas'
//! caches expire within `library_cache_ttl` (1 s by default).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use uuid::Uuid;

use loraforge_db::{ReportQuery, ReportRow, ReportState};
use loraforge_domain::moderation::HIDE_REASON;
use loraforge_domain::{LoraId, LoraModel, text};

use crate::auth::AuthUser;
use crate::body;
use crate::error::{ApiError, ApiResult, body_error, invalid_text};
use crate::routes::reports::ReportView;
use crate::state::AppState;
use crate::views::{CreatorView, ErrorBody, HiddenView};

const MAX_PAGE: u32 = 100;
const DEFAULT_PAGE: u32 = 50;

fn require_admin(user: &AuthUser) -> ApiResult<()> {
    if user.is_admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only admins can review reports and hide LoRAs",
        ))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportsParams {
    /// `open` (default: the queue, oldest first) or `resolved` (most recently resolved first).
    pub status: Option<String>,
    /// 1–100, default 50.
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

/// The reported LoRA, as an admin judges it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportedLoraView {
    pub id: Uuid,
    pub name: String,
    pub creator: CreatorView,
    /// Set while hidden.
    pub hidden: Option<HiddenView>,
    /// Open reports of this LoRA (all reporters).
    pub open_reports: u32,
}

/// A report with its LoRA.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminReportView {
    pub report: ReportView,
    pub lora: ReportedLoraView,
}

impl From<&ReportRow> for AdminReportView {
    fn from(r: &ReportRow) -> Self {
        Self {
            report: ReportView::from(&r.report),
            lora: ReportedLoraView {
                id: r.report.lora_id.0,
                name: r.lora_name.clone(),
                // Admins see creators' addresses everywhere.
                creator: CreatorView::of(&r.creator, true),
                hidden: r.hidden.as_ref().map(HiddenView::from),
                open_reports: r.open_reports_of_lora,
            },
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminReportList {
    pub items: Vec<AdminReportView>,
    /// Every report in this status.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// Reports, with each LoRA's name, creator, hidden state and open-report count. Admins only.
#[utoipa::path(get, path = "/api/v1/admin/reports", params(ReportsParams), tag = "moderation",
    security(("bearer" = [])),
    responses((status = 200, body = AdminReportList), (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    q: Result<Query<ReportsParams>, QueryRejection>,
) -> ApiResult<Json<AdminReportList>> {
    require_admin(&user)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let report_state = match q.status.as_deref() {
        None | Some("") | Some("open") => ReportState::Open,
        Some("resolved") => ReportState::Resolved,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("status {other:?} is not supported; use open or resolved"),
            ));
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be from 1 to {MAX_PAGE}"),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    let page = state
        .repo()
        .list_reports(&ReportQuery {
            state: report_state,
            limit,
            offset,
        })
        .await?;
    Ok(Json(AdminReportList {
        items: page.items.iter().map(AdminReportView::from).collect(),
        total: page.total,
        limit,
        offset,
    }))
}

/// Body of `POST /api/v1/admin/lora-models/{id}/hide`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HideBody {
    /// Why, shown to the LoRA's owner: 1–1,000 characters.
    #[schema(max_length = 1000)]
    pub reason: String,
}

/// A LoRA's moderation state after an admin's action.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModerationView {
    pub lora_id: Uuid,
    /// Set while hidden (after a repeated hide: the first hide's time and reason).
    pub hidden: Option<HiddenView>,
    /// Open reports this call resolved as `hidden` (0 for unhide).
    pub resolved_reports: u32,
}

fn lora_id(id: &str) -> ApiResult<LoraId> {
    id.parse().map_err(|_| ApiError::not_found("LoRA"))
}

fn moderation_view(lora: &LoraModel, resolved_reports: u32) -> ModerationView {
    ModerationView {
        lora_id: lora.id.0,
        hidden: lora.hidden.as_ref().map(HiddenView::from),
        resolved_reports,
    }
}

/// Hides a LoRA from the library and everyone but its owner, and resolves its open reports.
/// Admins only; hiding a hidden LoRA keeps the first hide.
#[utoipa::path(post, path = "/api/v1/admin/lora-models/{id}/hide", request_body = HideBody, tag = "moderation",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = ModerationView),
        (status = 400, description = "invalid_json, invalid_request or invalid_reason", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody)))]
pub async fn hide(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ModerationView>> {
    require_admin(&user)?;
    let body = body.map_err(body_error)?;
    let req: HideBody = body::from_value(body::json_value(&body)?).map_err(|_| {
        ApiError::bad_request(
            "invalid_request",
            "send {\"reason\": \"…\"}: why the LoRA is hidden, shown to its owner",
        )
    })?;
    let reason =
        text::clean(&req.reason, &HIDE_REASON).map_err(|e| invalid_text("invalid_reason", &e))?;
    let id = lora_id(&id)?;
    let outcome = state
        .repo()
        .hide_lora(id, &reason, user.id, state.now())
        .await?;
    // The next listing must not show it: empty the library cache and wake event streams.
    state.notify_changed(id);
    if outcome.newly_hidden {
        tracing::info!(lora_id = %id, admin = %user.id, resolved = outcome.resolved_reports, "LoRA hidden");
    }
    Ok(Json(moderation_view(
        &outcome.lora,
        outcome.resolved_reports,
    )))
}

/// Makes a hidden LoRA visible again (its resolved reports stay resolved). Admins only.
#[utoipa::path(post, path = "/api/v1/admin/lora-models/{id}/unhide", tag = "moderation",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = ModerationView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn unhide(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ModerationView>> {
    require_admin(&user)?;
    let id = lora_id(&id)?;
    let lora = state.repo().unhide_lora(id).await?;
    state.notify_changed(id);
    tracing::info!(lora_id = %id, admin = %user.id, "LoRA unhidden");
    Ok(Json(moderation_view(&lora, 0)))
}

/// Dismisses one open report (the LoRA stays as it is). Admins only; a resolved report is
/// answered as it is.
#[utoipa::path(post, path = "/api/v1/admin/reports/{id}/dismiss", tag = "moderation",
    security(("bearer" = [])), params(("id" = i64, Path, description = "the report's id")),
    responses((status = 200, body = ReportView), (status = 400, description = "invalid_path", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn dismiss(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ReportView>> {
    require_admin(&user)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_path", "the report id is a number"))?;
    let report = state
        .repo()
        .dismiss_report(id, user.id, state.now())
        .await
        .map_err(|e| {
            if e.is_not_found() {
                ApiError::not_found("report")
            } else {
                e.into()
            }
        })?;
    Ok(Json(ReportView::from(&report)))
}
