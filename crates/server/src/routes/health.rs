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

/// The database and the storage answer.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "ready"), (status = 503, description = "a dependency is down")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (db, storage) = tokio::join!(state.repo().ping(), state.store().ping());
    let check = |r: Result<(), String>| match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    let ready = db.is_ok() && storage.is_ok();
    if let Err(e) = &db {
        tracing::warn!(error = %e, "readyz: database not reachable");
    }
    if let Err(e) = &storage {
        tracing::warn!(error = %e, "readyz: storage not reachable");
    }
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": check(db.map_err(|_| "unreachable".to_owned())),
        "storage": check(storage.map_err(|_| "unreachable".to_owned())),
    });
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}
