//! The fake Replicate's HTTP side: `/v1/…` behind auth (both schemes), injected answers and
//! random faults; `/files/…` serves trained tars without auth, as Replicate's delivery URLs.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::replicate::{FakeTrainingStatus, Injection, Shared, TrainingRecord, next_random};
use crate::{process, replicate_run};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route(
            "/v1/models/{owner}/{name}/versions/{version}/trainings",
            post(create),
        )
        .route("/v1/trainings", get(list))
        .route("/v1/trainings/{id}", get(training))
        .route("/v1/trainings/{id}/cancel", post(cancel))
        .route("/v1/webhooks/default/secret", get(secret))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), guard));
    Router::new()
        .route("/files/{id}/weights.tar", get(weights))
        .merge(api)
        .with_state(shared)
}

/// A problem+json body as Replicate sends its errors.
fn problem(status: StatusCode, detail: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({"detail": detail, "status": status.as_u16()})),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn authorised(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("Token "));
    token.is_some_and(|t| t.trim() == shared.config.token)
}

/// Auth, then injected answers, then random faults, then the route.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if !authorised(&shared, request.headers()) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "You did not pass a valid authentication token",
        );
    }
    let injected = {
        let mut st = shared.lock();
        if st.injections.is_empty() {
            None
        } else {
            Some(st.injections.remove(0))
        }
    };
    match injected {
        Some(Injection::Throttle) => return throttled(&shared),
        Some(Injection::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return problem(status, "injected by the fake");
        }
        None => {}
    }
    if let Some(faults) = shared.config.faults {
        let fail = next_random(&mut shared.lock().rng) < faults.rate;
        if fail {
            let status =
                StatusCode::from_u16(faults.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return problem(status, "a random fault injected by the fake");
        }
        if faults.lose_rate > 0.0 && request.method() == axum::http::Method::POST {
            let response = next.run(request).await;
            let lose = response.status().is_success() && {
                let mut st = shared.lock();
                let lose = next_random(&mut st.rng) < faults.lose_rate;
                st.lost_answers += u32::from(lose);
                lose
            };
            return if lose {
                problem(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            } else {
                response
            };
        }
    }
    next.run(request).await
}

/// 422 for inputs the model does not declare, in the shape of Replicate's input validation
/// (`title`, `detail`, `invalid_fields[]` of `{type, field, description}`).
fn invalid_input(undeclared: &[&String]) -> Response {
    let invalid: Vec<Value> = undeclared
        .iter()
        .map(|name| {
            json!({
                "type": "additional_property_not_allowed",
                "field": "input",
                "description": format!("Additional property {name} is not allowed"),
            })
        })
        .collect();
    let names: Vec<&str> = undeclared.iter().map(|n| n.as_str()).collect();
    let mut response = (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(json!({
            "title": "Input validation failed",
            "detail": format!("- input: Additional property {} is not allowed", names.join(", ")),
            "status": 422,
            "invalid_fields": invalid,
        })),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn throttled(shared: &Shared) -> Response {
    let mut response = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "Request was throttled. Expected available in 1 second.",
    );
    let headers = response.headers_mut();
    headers.insert("ratelimit-remaining", HeaderValue::from_static("0"));
    headers.insert("ratelimit-reset", HeaderValue::from_static("1"));
    if shared.config.retry_after_header {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn new_id() -> String {
    // Replicate's ids are 26 lowercase base32 characters.
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bits = uuid::Uuid::new_v4().as_u128();
    (0..26)
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path((owner, name, version)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "The request body is not valid JSON",
        );
    };
    let Some(destination) = body.get("destination").and_then(Value::as_str) else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "destination: This field is required.",
        );
    };
    if !shared.config.models.iter().any(|m| m == destination) {
        return problem(
            StatusCode::NOT_FOUND,
            "The specified training destination does not exist",
        );
    }
    let input = body.get("input").cloned().unwrap_or(Value::Null);
    let Some(fields) = input.as_object() else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "input: This field must be an object.",
        );
    };
    if let Some(declared) = &shared.config.declared_inputs {
        let undeclared: Vec<&String> = fields
            .keys()
            .filter(|k| !declared.iter().any(|d| d == *k))
            .collect();
        if !undeclared.is_empty() {
            return invalid_input(&undeclared);
        }
    }
    let webhook = body
        .get("webhook")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let filter = body
        .get("webhook_events_filter")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
    let id = new_id();
    let (answer, lose) = {
        let mut st = shared.lock();
        st.next_seq += 1;
        st.creates += 1;
        let record = TrainingRecord {
            seq: st.next_seq,
            id: id.clone(),
            model: format!("{owner}/{name}"),
            version,
            destination: destination.to_owned(),
            input,
            status: FakeTrainingStatus::Starting,
            logs: String::new(),
            error: None,
            output: None,
            predict_time: None,
            created_at: chrono::Utc::now(),
            started_at: None,
            completed_at: None,
            started: None,
            webhook,
            webhook_events_filter: filter,
            pid: None,
            weights: None,
        };
        let answer = record.to_json(&shared.base);
        st.trainings.insert(id.clone(), record);
        let lose = st.lose_create_answer > 0;
        st.lose_create_answer = st.lose_create_answer.saturating_sub(1);
        st.lost_answers += u32::from(lose);
        (answer, lose)
    };
    tokio::spawn(replicate_run::run(Arc::clone(&shared), id));
    if lose {
        return problem(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
    }
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

async fn training(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let st = shared.lock();
    match st.trainings.get(&id) {
        Some(t) => axum::Json(t.to_json(&shared.base)).into_response(),
        None => problem(StatusCode::NOT_FOUND, "Not found."),
    }
}

#[derive(serde::Deserialize)]
struct Cursor {
    cursor: Option<String>,
}

/// Newest first, `page_size` per page; `next` is an absolute URL with an opaque cursor.
async fn list(State(shared): State<Arc<Shared>>, Query(q): Query<Cursor>) -> Response {
    let from = match q.cursor.as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return problem(StatusCode::BAD_REQUEST, "Invalid cursor"),
    };
    let st = shared.lock();
    let mut all: Vec<&TrainingRecord> = st.trainings.values().collect();
    all.sort_by_key(|t| std::cmp::Reverse(t.seq));
    let size = shared.config.page_size.max(1);
    let results: Vec<Value> = all
        .iter()
        .skip(from)
        .take(size)
        .map(|t| t.to_json(&shared.base))
        .collect();
    let link = |at: usize| format!("{}/v1/trainings?cursor={at}", shared.base);
    let next = (from + size < all.len()).then(|| link(from + size));
    let previous = (from > 0).then(|| link(from.saturating_sub(size)));
    axum::Json(json!({"next": next, "previous": previous, "results": results})).into_response()
}

/// Idempotent: a terminal training keeps its state; a live one becomes `canceled` at once and
/// its command is stopped (SIGTERM, SIGKILL after the grace).
async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let (answer, pid, changed) = {
        let mut st = shared.lock();
        st.cancels += 1;
        let Some(t) = st.trainings.get_mut(&id) else {
            return problem(StatusCode::NOT_FOUND, "Not found.");
        };
        let changed = !t.status.is_terminal();
        t.finish(FakeTrainingStatus::Canceled);
        (t.to_json(&shared.base), t.pid, changed)
    };
    if let Some(pid) = pid.filter(|_| changed) {
        process::signal_group(pid, libc::SIGTERM);
        let grace = shared.config.kill_grace;
        let shared = Arc::clone(&shared);
        let id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still = shared.lock().trainings.get(&id).and_then(|t| t.pid);
            if still == Some(pid) {
                process::signal_group(pid, libc::SIGKILL);
            }
        });
    }
    if changed {
        replicate_run::completed_hook(&shared, &id);
    }
    axum::Json(answer).into_response()
}

async fn secret(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({"key": shared.config.webhook_secret})).into_response()
}

async fn weights(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let path = shared
        .lock()
        .trainings
        .get(&id)
        .and_then(|t| t.weights.clone());
    let Some(path) = path else {
        return problem(StatusCode::NOT_FOUND, "Not found.");
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/x-tar")], bytes).into_response(),
        Err(_) => problem(StatusCode::NOT_FOUND, "Not found."),
    }
}
