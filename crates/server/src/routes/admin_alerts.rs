//! Operator alerts: `GET /api/v1/admin/alerts` (newest first, `?open=true`, paged by
//! `before`) and `POST /api/v1/admin/alerts/{id}/ack`. Admins only. Alerts are raised by the
//! service (`Repository::record_alert`, deduplicated within the cooldown) and delivered by
//! `crate::alerts::deliver_alerts`; acknowledging closes one, so its next occurrence is a new
//! alert, delivered again.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use loraforge_db::{AlertDelivery, AlertQuery, AlertRecord};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::ErrorBody;

const MAX_PAGE: u32 = 100;
const DEFAULT_PAGE: u32 = 50;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsParams {
    /// Only alerts nobody has acknowledged.
    pub open: Option<bool>,
    /// Only alerts with an id below this one (the previous page's `next_before`).
    pub before: Option<i64>,
    /// 1–100, default 50.
    pub limit: Option<u32>,
}

/// One channel's delivery of an alert.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// `slack`, `webhook` or `email`.
    pub channel: String,
    pub attempts: u32,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Set when the deliverer stopped trying.
    pub gave_up_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl From<AlertDelivery> for DeliveryView {
    fn from(d: AlertDelivery) -> Self {
        Self {
            channel: d.channel,
            attempts: d.attempts,
            delivered_at: d.delivered_at,
            gave_up_at: d.gave_up_at,
            next_attempt_at: d.next_attempt_at,
            last_error: d.last_error,
        }
    }
}

/// An operator alert.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertView {
    pub id: i64,
    /// What kind of trouble, e.g. `orphan_instance`, `training_too_long`.
    pub kind: String,
    /// What it is about (an instance, a LoRA, a backend).
    pub subject: String,
    /// The latest occurrence's message.
    pub message: String,
    /// Occurrences folded into this alert within the cooldown.
    pub count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The admin (user id) who acknowledged it.
    pub acknowledged_by: Option<String>,
    pub deliveries: Vec<DeliveryView>,
}

fn view(a: AlertRecord, deliveries: Vec<AlertDelivery>) -> AlertView {
    AlertView {
        id: a.id,
        kind: a.kind,
        subject: a.subject,
        message: a.message,
        count: a.count,
        first_seen: a.first_seen,
        last_seen: a.last_seen,
        acknowledged_at: a.acknowledged_at,
        acknowledged_by: a.acknowledged_by,
        deliveries: deliveries.into_iter().map(DeliveryView::from).collect(),
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertView>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<i64>,
}

fn require_admin(user: &AuthUser) -> ApiResult<()> {
    if user.is_admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only admins can see and acknowledge alerts",
        ))
    }
}

/// Operator alerts, newest first, each with its delivery state. Admins only.
#[utoipa::path(get, path = "/api/v1/admin/alerts", params(AlertsParams), tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, body = AlertList), (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    q: Result<Query<AlertsParams>, QueryRejection>,
) -> ApiResult<Json<AlertList>> {
    require_admin(&user)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be 1 to {MAX_PAGE}"),
        ));
    }
    let rows = state
        .repo()
        .list_alerts(AlertQuery {
            open_only: q.open.unwrap_or(false),
            before_id: q.before,
            limit,
        })
        .await?;
    let next_before = (rows.len() == limit as usize)
        .then(|| rows.last().map(|a| a.id))
        .flatten();
    let mut alerts = Vec::with_capacity(rows.len());
    for a in rows {
        let deliveries = state.repo().alert_deliveries(a.id).await?;
        alerts.push(view(a, deliveries));
    }
    Ok(Json(AlertList {
        alerts,
        next_before,
    }))
}

/// Acknowledges an alert: it is closed, and the next occurrence of the same trouble is a new
/// alert (delivered again). Acknowledging twice keeps the first. Admins only.
#[utoipa::path(post, path = "/api/v1/admin/alerts/{id}/ack", tag = "admin",
    security(("bearer" = [])), params(("id" = i64, Path, description = "the alert's id")),
    responses((status = 200, body = AlertView), (status = 400, description = "invalid_path", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "not_found", body = ErrorBody)))]
pub async fn ack(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<AlertView>> {
    require_admin(&user)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_path", "the alert id is a number"))?;
    let alert = state
        .repo()
        .ack_alert(id, &user.id.to_string(), state.now())
        .await?
        .ok_or_else(|| ApiError::not_found("alert"))?;
    tracing::info!(alert = id, admin = %user.id, "alert acknowledged");
    let deliveries = state.repo().alert_deliveries(id).await?;
    Ok(Json(view(alert, deliveries)))
}
