//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database and the storage answer, and this process's job engine (when it runs one) is
/// alive and ticking. `engine.can_train: false` (with `engine.reason`) means LoRAs wait queued
/// until a backend can train: the API itself still serves, so that alone is not a 503.
/// `library_index` says whether the in-memory library has loaded (until then listings use the
/// database; not a condition of readiness either).
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "ready"), (status = 503, description = "a dependency is down, or the job engine is dead or stuck")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (db, storage) = tokio::join!(state.repo().ping(), state.store().ping());
    let check = |r: Result<(), String>| match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    let engine = state.engine_probe().map(|p| p.status());
    let engine_ok = engine.as_ref().is_none_or(|e| {
        e.running
            && e.last_tick_age_secs
                .is_none_or(|age| age <= e.stale_after_secs)
    });
    let ready = db.is_ok() && storage.is_ok() && engine_ok;
    if let Err(e) = &db {
        tracing::warn!(error = %e, "readyz: database not reachable");
    }
    if let Err(e) = &storage {
        tracing::warn!(error = %e, "readyz: storage not reachable");
    }
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": check(db.map_err(|_| "unreachable".to_owned())),
        "storage": check(storage.map_err(|_| "unreachable".to_owned())),
    });
    if let Some(index) = state.library_index() {
        // Not a condition of readiness: until it is loaded, listings use the database.
        body["library_index"] = json!({"loaded": index.loaded(), "loras": index.len()});
    }
    if let Some(e) = engine {
        if !engine_ok {
            tracing::warn!(running = e.running, last_tick_age_secs = ?e.last_tick_age_secs, "readyz: the job engine is not ticking");
        }
        body["engine"] = json!({
            "ok": engine_ok,
            "running": e.running,
            "last_tick_age_secs": e.last_tick_age_secs,
            "restarts": e.restarts,
            "can_train": e.cannot_train.is_none(),
            "reason": e.cannot_train,
        });
    }
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}
