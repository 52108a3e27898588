//! Money for operators: the system budget (`GET`/`PUT /api/v1/admin/budget`; the stored budget
//! overrides `LORAFORGE_MONTHLY_BUDGET_USD` on every replica, and the engine's budget gate reads
//! it within one tick) and the month's overview (`GET /api/v1/admin/stats`). Every amount is a
//! sum of the cost ledger (`loraforge_db::ledger`), shown as a [`MoneyView`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use loraforge_db::ledger::budget_status;
use loraforge_domain::budget::{BudgetStatus, month_key};
use loraforge_domain::{MicroUsd, MonthlyWindow};

use crate::auth::AuthUser;
use crate::body::{from_value, json_value};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::{ErrorBody, MoneyView};

/// Users and LoRAs listed in the overview's top lists.
const TOP: u32 = 10;
/// The largest budget accepted: $10,000,000 a month.
const MAX_BUDGET: MicroUsd = MicroUsd(10_000_000 * 1_000_000);

fn require_admin(user: &AuthUser) -> ApiResult<()> {
    if user.is_admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only admins can see and change the budget and the cost overview",
        ))
    }
}

/// The month's system budget.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetView {
    /// The UTC month, `YYYY-MM`.
    pub month: String,
    /// When the month ends and held jobs start again.
    pub resets_at: DateTime<Utc>,
    pub budget: MoneyView,
    /// The month's ledger (GPU time of ended runs, storage).
    pub spent: MoneyView,
    /// What running jobs are expected to cost (price × the longer of their time so far and the
    /// median time of their backend's recent runs).
    pub committed: MoneyView,
    /// Budget less spent and committed (never below 0).
    pub left: MoneyView,
    /// (spent + committed) / budget, percent with two decimals.
    pub percent_used: String,
    /// New jobs wait (`queued`, with a message) once this is true.
    pub exhausted: bool,
    /// The warning alert's threshold, percent.
    pub alert_percent: u32,
    /// `true` when an admin set the budget (else it is `LORAFORGE_MONTHLY_BUDGET_USD`).
    pub overridden: bool,
}

fn percent_text(basis_points: i64) -> String {
    format!("{}.{:02}", basis_points / 100, basis_points % 100)
}

fn budget_view(s: &BudgetStatus, alert_percent: u32, overridden: bool) -> BudgetView {
    let bp = s.percent_basis_points();
    BudgetView {
        month: s.month.clone(),
        resets_at: s.window.end,
        budget: s.budget.into(),
        spent: s.spent.into(),
        committed: s.committed.into(),
        left: s.left().into(),
        percent_used: percent_text(bp),
        exhausted: bp >= 10_000,
        alert_percent,
        overridden,
    }
}

async fn current(state: &AppState) -> ApiResult<BudgetView> {
    let costs = state.settings().costs;
    let repo = state.repo();
    let overridden = repo.budget_override().await?.is_some();
    let status = budget_status(repo, costs.monthly_budget, state.now()).await?;
    Ok(budget_view(&status, costs.alert_percent, overridden))
}

/// This month's budget: the budget, what was spent, what running jobs are expected to cost and
/// what is left. Admins only.
#[utoipa::path(get, path = "/api/v1/admin/budget", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = BudgetView), (status = 403, body = ErrorBody)))]
pub async fn get_budget(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<BudgetView>> {
    require_admin(&user)?;
    Ok(Json(current(&state).await?))
}

/// Body of `PUT /api/v1/admin/budget`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    /// Dollars a month, as decimal text (`"350.00"`) or a JSON number (`350`).
    #[schema(value_type = String, example = "350.00")]
    pub monthly_budget_usd: serde_json::Value,
}

fn invalid_budget(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_budget",
        format!(
            "{why}; send {{\"monthly_budget_usd\": \"350.00\"}} (dollars a month, 0 to 10000000)"
        ),
    )
}

/// Sets the monthly budget for every replica (overrides `LORAFORGE_MONTHLY_BUDGET_USD`); jobs
/// held by the old budget start at the engine's next tick if the new one has room. Admins only.
#[utoipa::path(put, path = "/api/v1/admin/budget", request_body = SetBudget, tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, body = BudgetView), (status = 400, description = "invalid_json", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 422, description = "invalid_budget", body = ErrorBody)))]
pub async fn put_budget(
    State(state): State<AppState>,
    user: AuthUser,
    body: Bytes,
) -> ApiResult<Json<BudgetView>> {
    require_admin(&user)?;
    let body: SetBudget = from_value(json_value(&body)?).map_err(|e| invalid_budget(e.message))?;
    let budget = match &body.monthly_budget_usd {
        v @ (serde_json::Value::String(_) | serde_json::Value::Number(_)) => {
            MicroUsd::from_json(v).map_err(invalid_budget)?
        }
        _ => {
            return Err(invalid_budget(
                "`monthly_budget_usd` must be a decimal string or a number",
            ));
        }
    };
    if budget > MAX_BUDGET {
        return Err(invalid_budget(format!(
            "{budget} is more than the largest budget accepted"
        )));
    }
    let now = state.now();
    state
        .repo()
        .set_budget_override(budget, Some(&user.id.to_string()), now)
        .await?;
    tracing::warn!(admin = %user.id, budget = %budget, "monthly budget set");
    state.wake_engine();
    Ok(Json(current(&state).await?))
}

/// An amount under a name (a backend, a kind of cost).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpendLine {
    /// A backend (`null`: storage) or a kind (`gpu`, `validation`, `storage`).
    pub name: Option<String>,
    pub amount: MoneyView,
}

/// A user and how many LoRAs they created this month.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserCount {
    pub user_id: String,
    pub loras: u64,
}

/// A LoRA and how often it was used.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReuseCount {
    pub lora_id: String,
    pub name: String,
    pub uses: u64,
}

/// This month at a glance.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatsView {
    pub month: String,
    pub spend: MoneyView,
    pub spend_by_backend: Vec<SpendLine>,
    /// By kind of cost (the stage it paid for: `gpu` for training including its validation
    /// images, `validation` for separately paid validation, `storage`).
    pub spend_by_kind: Vec<SpendLine>,
    pub budget: BudgetView,
    pub completed: u64,
    pub failed: u64,
    /// completed / (completed + failed), percent with two decimals; null with neither.
    pub success_rate_percent: Option<String>,
    /// Mean time of this month's trained runs, seconds.
    pub avg_training_seconds: Option<f64>,
    pub avg_cost_per_completed_lora: Option<MoneyView>,
    /// Users with the most LoRAs created this month.
    pub loras_per_user: Vec<UserCount>,
    /// Every LoRA's uses added up (`usage_count`; nothing counts uses yet, so 0 until it does).
    pub total_uses: u64,
    pub most_used: Vec<ReuseCount>,
    /// Alerts not yet acknowledged (`POST /api/v1/admin/alerts/{id}/ack`).
    pub open_alerts: u64,
}

fn lines(v: Vec<(Option<String>, MicroUsd)>) -> Vec<SpendLine> {
    v.into_iter()
        .map(|(name, a)| SpendLine {
            name,
            amount: a.into(),
        })
        .collect()
}

/// This month's spend by backend and kind, the budget, success rate, average time and cost per
/// LoRA, LoRAs per user, reuse and alerts. Admins only.
#[utoipa::path(get, path = "/api/v1/admin/stats", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = StatsView), (status = 403, body = ErrorBody)))]
pub async fn stats(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<StatsView>> {
    require_admin(&user)?;
    let now = state.now();
    let month = month_key(now);
    let repo = state.repo();
    let totals = repo.month_totals(&month).await?;
    let s = repo
        .month_stats(MonthlyWindow::containing(now), TOP)
        .await?;
    let decided = s.completed + s.failed;
    Ok(Json(StatsView {
        month,
        spend: totals.total.into(),
        spend_by_backend: lines(totals.by_backend),
        spend_by_kind: lines(
            totals
                .by_kind
                .into_iter()
                .map(|(k, a)| (Some(k), a))
                .collect(),
        ),
        budget: current(&state).await?,
        completed: s.completed,
        failed: s.failed,
        success_rate_percent: (decided > 0)
            .then(|| percent_text(i64::try_from(s.completed * 10_000 / decided).unwrap_or(10_000))),
        avg_training_seconds: s.avg_training_millis.map(|m| m as f64 / 1000.0),
        avg_cost_per_completed_lora: s.avg_cost_per_completed.map(MoneyView::from),
        loras_per_user: s
            .loras_per_user
            .into_iter()
            .map(|(u, n)| UserCount {
                user_id: u.to_string(),
                loras: n,
            })
            .collect(),
        total_uses: s.total_uses,
        most_used: s
            .most_used
            .into_iter()
            .map(|(l, name, uses)| ReuseCount {
                lora_id: l.to_string(),
                name,
                uses,
            })
            .collect(),
        open_alerts: s.alerts,
    }))
}
