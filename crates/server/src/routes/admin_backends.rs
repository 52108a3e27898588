//! The admin view of the training backends: `GET /api/v1/admin/backends` (each configured
//! backend, in the router's order: its circuit breaker and its latest transitions, its live runs
//! and its limit) and `POST /api/v1/admin/backends/{name}/breaker` (force a breaker open or
//! closed, recorded as a transition naming the admin). The breaker's rules are the domain's
//! (`domain::breaker`); forcing goes through the same repository step as the engine's events.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use loraforge_db::BreakerTransition;
use loraforge_domain::breaker::{Breaker, BreakerEvent, BreakerState};

use crate::auth::AuthUser;
use crate::body::{from_value, json_value};
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, BackendInfo};
use crate::views::ErrorBody;

/// Transitions shown per backend.
const HISTORY: u32 = 20;

/// One recorded change of a breaker's state.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransitionView {
    /// `closed`, `open` or `half_open`.
    pub from: String,
    pub to: String,
    pub reason: String,
    /// The admin (user id) who forced it; null when the breaker decided.
    pub forced_by: Option<String>,
    pub at: DateTime<Utc>,
}

impl From<&BreakerTransition> for TransitionView {
    fn from(t: &BreakerTransition) -> Self {
        Self {
            from: t.from.as_str().to_owned(),
            to: t.to.as_str().to_owned(),
            reason: t.reason.clone(),
            forced_by: t.forced_by.clone(),
            at: t.at,
        }
    }
}

/// A training backend as operators see it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendView {
    pub name: String,
    /// Its place in the router's order (`LORAFORGE_BACKENDS`), from 1.
    pub position: usize,
    /// `closed` (runs go there), `open` (skipped) or `half_open` (one probe in flight).
    pub breaker_state: String,
    /// Provider-side failures counted within the window since the breaker last closed.
    pub failures_in_window: u32,
    pub opened_at: Option<DateTime<Utc>>,
    /// When an open breaker lets its next probe through (a half-open one: when its probe is
    /// given up).
    pub next_probe_at: Option<DateTime<Utc>>,
    /// Runs whose instance is not confirmed gone.
    pub live_runs: usize,
    /// Runs at once (per engine for a host's own processes, in all for a provider).
    pub max_runs: usize,
    /// Instances reachable from every replica (a provider's API).
    pub shared: bool,
    /// The latest transitions, newest first.
    pub transitions: Vec<TransitionView>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendsView {
    pub backends: Vec<BackendView>,
    /// Failures within this many seconds open a breaker …
    pub window_secs: i64,
    /// … when there are at least this many.
    pub failures_to_open: u32,
    /// Seconds an open breaker waits before its probe.
    pub open_secs: i64,
}

/// The state an admin may force.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForcedState {
    Open,
    Closed,
}

/// Body of `POST /api/v1/admin/backends/{name}/breaker`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForceBreaker {
    pub state: ForcedState,
    /// Why (kept with the transition; at most 500 characters).
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

fn require_admin(user: &AuthUser) -> ApiResult<()> {
    if user.is_admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only admins can see and steer backends",
        ))
    }
}

async fn view(
    state: &AppState,
    info: &BackendInfo,
    position: usize,
    b: Breaker,
    failures: u32,
    live: usize,
) -> ApiResult<BackendView> {
    let rules = state.breaker_rules();
    let transitions = state
        .repo()
        .breaker_transitions(Some(&info.name), HISTORY)
        .await?;
    Ok(BackendView {
        name: info.name.clone(),
        position,
        breaker_state: b.state.as_str().to_owned(),
        failures_in_window: failures,
        opened_at: b.opened_at,
        next_probe_at: b.next_probe_at(rules),
        live_runs: live,
        max_runs: info.max_runs,
        shared: info.shared,
        transitions: transitions.iter().map(TransitionView::from).collect(),
    })
}

/// Every configured backend in the router's order, with its breaker, its history and its runs.
/// Admins only.
#[utoipa::path(get, path = "/api/v1/admin/backends", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = BackendsView), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<BackendsView>> {
    require_admin(&user)?;
    let now = state.now();
    let rules = *state.breaker_rules();
    let mut breakers: HashMap<String, (Breaker, u32)> = state
        .repo()
        .breakers(&rules, now)
        .await?
        .into_iter()
        .map(|s| (s.breaker.backend.clone(), (s.breaker, s.failures_in_window)))
        .collect();
    let mut live: HashMap<String, usize> = HashMap::new();
    for o in state.repo().open_runs().await? {
        *live.entry(o.run.backend).or_default() += 1;
    }
    let mut backends = Vec::new();
    for (i, info) in state.backends().iter().enumerate() {
        let (b, failures) = breakers
            .remove(&info.name)
            .unwrap_or_else(|| (Breaker::closed(&info.name), 0));
        let runs = live.get(&info.name).copied().unwrap_or(0);
        backends.push(view(&state, info, i + 1, b, failures, runs).await?);
    }
    Ok(Json(BackendsView {
        backends,
        window_secs: rules.window.num_seconds(),
        failures_to_open: rules.failures_to_open,
        open_secs: rules.open_for.num_seconds(),
    }))
}

/// Forces a backend's circuit breaker open (the router skips it until an admin closes it or its
/// probe succeeds) or closed (runs go there again, earlier failures forgotten). Recorded as a
/// transition naming the admin. Admins only.
#[utoipa::path(post, path = "/api/v1/admin/backends/{name}/breaker", request_body = ForceBreaker, tag = "admin",
    security(("bearer" = [])), params(("name" = String, Path, description = "a configured backend's name")),
    responses((status = 200, body = BackendView), (status = 400, description = "invalid_json", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "backend_not_found", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 422, description = "invalid_breaker_request", body = ErrorBody)))]
pub async fn force(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<BackendView>> {
    require_admin(&user)?;
    let Some((position, info)) = state
        .backends()
        .iter()
        .enumerate()
        .find(|(_, b)| b.name == name)
        .map(|(i, b)| (i + 1, b.clone()))
    else {
        let known: Vec<&str> = state.backends().iter().map(|b| b.name.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "backend_not_found",
            format!(
                "no backend is named {name:?}; configured: {}",
                known.join(", ")
            ),
        ));
    };
    let body: ForceBreaker = from_value(json_value(&body)?).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_breaker_request",
            format!(
                "{}; send {{\"state\": \"open\" | \"closed\", \"reason\": \"…\"}}",
                e.message
            ),
        )
    })?;
    let reason = body
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "no reason given".to_owned());
    if reason.chars().count() > 500 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_breaker_request",
            "`reason` is limited to 500 characters",
        ));
    }
    let to = match body.state {
        ForcedState::Open => BreakerState::Open,
        ForcedState::Closed => BreakerState::Closed,
    };
    let event = BreakerEvent::Force {
        to,
        reason,
        by: user.id.to_string(),
    };
    let now = state.now();
    let step = state
        .repo()
        .step_breaker(&info.name, &event, state.breaker_rules(), now)
        .await?;
    if let Some(t) = &step.transition {
        tracing::warn!(backend = %info.name, admin = %user.id, from = %t.from, to = %t.to, "circuit breaker forced");
    }
    let live = state
        .repo()
        .open_runs()
        .await?
        .iter()
        .filter(|o| o.run.backend == info.name)
        .count();
    Ok(Json(
        view(
            &state,
            &info,
            position,
            step.breaker,
            step.failures_in_window,
            live,
        )
        .await?,
    ))
}
