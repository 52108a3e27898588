//! Credits (seed 003): `GET /api/v1/me/credits` (balance, reserved, history) and an admin's
//! grant or adjustment, `POST /api/v1/admin/users/{id}/credits`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use loraforge_db::{CreditEntry, CreditSummary, NewCreditGrant};
use loraforge_domain::credit::CreditKind;
use loraforge_domain::{MicroUsd, TextRule, UserId, text};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, invalid_text};
use crate::quotes::usd;
use crate::state::AppState;
use crate::views::ErrorBody;

const MAX_PAGE: u32 = 100;
/// The deepest page start: a history is read newest first, so this is far past any real one.
const MAX_OFFSET: u64 = 1_000_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// 1–100, default 50.
    pub limit: Option<u32>,
    /// Entries to skip, 0–1,000,000; default 0.
    #[param(maximum = 1_000_000)]
    pub offset: Option<u64>,
}

/// One ledger entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditEntryView {
    pub id: i64,
    /// grant, adjust, reserve, release, deduct, refund or reimburse (a charge given back when
    /// the LoRA failed later: its file was lost).
    pub kind: String,
    /// Signed effect on what you may spend, in micro-dollars.
    pub amount_micros: i64,
    pub amount_usd: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_id: Option<Uuid>,
    pub reason: String,
    pub created_at: String,
}

/// Your credits.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsView {
    /// Everything you have, held for trainings in progress or not (micro-dollars).
    pub balance_micros: i64,
    pub balance_usd: String,
    /// Held by trainings in progress.
    pub reserved_micros: i64,
    pub reserved_usd: String,
    /// What a new training may reserve.
    pub available_micros: i64,
    pub available_usd: String,
    /// Credits are being charged for trainings (`LORAFORGE_CREDITS=on`).
    pub enabled: bool,
    /// Newest first.
    pub history: Vec<CreditEntryView>,
    pub limit: u32,
    pub offset: u64,
}

fn summary_view(
    s: CreditSummary,
    enabled: bool,
    history: Vec<CreditEntry>,
    limit: u32,
    offset: u64,
) -> CreditsView {
    CreditsView {
        balance_micros: s.balance.0,
        balance_usd: usd(s.balance),
        reserved_micros: s.reserved.0,
        reserved_usd: usd(s.reserved),
        available_micros: s.available.0,
        available_usd: usd(s.available),
        enabled,
        history: history.iter().map(entry_view).collect(),
        limit,
        offset,
    }
}

fn entry_view(e: &CreditEntry) -> CreditEntryView {
    CreditEntryView {
        id: e.id,
        kind: e.kind.as_str().to_owned(),
        amount_micros: e.amount.0,
        amount_usd: usd(e.amount),
        lora_id: e.lora_id.map(|l| l.0),
        reason: e.reason.clone(),
        created_at: e.created_at.to_rfc3339(),
    }
}

/// Your credit balance, what trainings in progress hold, and the ledger (paged, newest first).
#[utoipa::path(get, path = "/api/v1/me/credits", tag = "account", security(("bearer" = [])),
    params(HistoryParams),
    responses((status = 200, body = CreditsView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn mine(
    State(state): State<AppState>,
    user: AuthUser,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> ApiResult<Json<CreditsView>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be from 1 to {MAX_PAGE}"),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("offset must be from 0 to {MAX_OFFSET}"),
        ));
    }
    let summary = state.repo().credit_summary(user.id).await?;
    let history = state.repo().credit_history(user.id, limit, offset).await?;
    Ok(Json(summary_view(
        summary,
        state.settings().credits.enabled,
        history,
        limit,
        offset,
    )))
}

/// Body of an admin's grant or adjustment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// Decimal dollars: positive grants, negative adjusts ("10.00", "-2.5").
    pub amount_usd: String,
    /// Why, kept in the ledger (required, at most 500 characters).
    pub reason: Option<String>,
}

/// The entry written and the user's credits after it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    pub entry: CreditEntryView,
    pub balance_micros: i64,
    pub reserved_micros: i64,
    pub available_micros: i64,
}

/// Grants (positive `amount_usd`) or adjusts (negative) a user's credits, with a reason.
/// Admins only.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/credits", request_body = GrantBody, tag = "admin",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 201, body = GrantView),
        (status = 400, description = "invalid_json or invalid_amount", body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "not_found: the id is not a user id (a UUID)", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 422, description = "reason_required or invalid_reason", body = ErrorBody)))]
pub async fn grant(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    body: Result<Json<GrantBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    if !user.is_admin {
        return Err(ApiError::forbidden("only admins can grant credits"));
    }
    // Any UUID is a user: credits may be granted before the user's first request.
    let target: UserId = id.parse().map_err(|_| ApiError::not_found("user"))?;
    let Json(body) = body.map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "{}; send {{\"amount_usd\": \"10.00\", \"reason\": \"…\"}}",
                e.body_text()
            ),
        )
    })?;
    let raw = body.amount_usd.trim();
    let (negative, digits) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let amount = MicroUsd::parse_dollars(digits)
        .ok()
        .filter(|m| m.0 != 0)
        .map(|m| if negative { MicroUsd(-m.0) } else { m })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_amount",
                format!("amount_usd {raw:?} must be a non-zero decimal amount of dollars like \"10.00\" or \"-2.50\""),
            )
        })?;
    let reason = text::clean_optional(body.reason.as_deref(), &TextRule::DESCRIPTION)
        .map_err(|e| invalid_text("invalid_reason", &e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "reason_required",
                "a reason is required for every grant or adjustment; it is kept in the user's ledger",
            )
        })?;
    if reason.chars().count() > 500 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_reason",
            "reason is limited to 500 characters",
        ));
    }
    let kind = if amount.0 > 0 {
        CreditKind::Grant
    } else {
        CreditKind::Adjust
    };
    let entry = state
        .repo()
        .add_credits(NewCreditGrant {
            user_id: target,
            kind,
            amount,
            reason,
            actor: Some(user.id.to_string()),
            now: state.now(),
        })
        .await?;
    let s = state.repo().credit_summary(target).await?;
    tracing::info!(admin = %user.id, user = %target, amount = amount.0, kind = kind.as_str(), "credits changed");
    Ok((
        StatusCode::CREATED,
        Json(GrantView {
            entry: entry_view(&entry),
            balance_micros: s.balance.0,
            reserved_micros: s.reserved.0,
            available_micros: s.available.0,
        }),
    ))
}
