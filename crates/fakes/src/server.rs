//! The HTTP side: `POST /graphql` and `/v2/{endpoint_id}/…`, auth as each API documents it, and
//! injected failures in front of both.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::state::Shared;
use crate::{gql, jobs, pods};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/graphql", post(graphql))
        .route("/v2/{endpoint}/run", post(run))
        .route("/v2/{endpoint}/status/{id}", get(status))
        .route("/v2/{endpoint}/cancel/{id}", post(cancel))
        .route("/v2/{endpoint}/health", get(health))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), inject))
        .with_state(shared)
}

/// Largest request body the fake reads (its APIs take small JSON documents).
const MAX_BODY: usize = 2 << 20;

/// What a request asks for, for the request log: the GraphQL root field, or the serverless
/// route's verb.
fn operation_of(path: &str, body: &[u8]) -> String {
    if path == "/graphql" {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let variables = request
            .get("variables")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        return request
            .get("query")
            .and_then(Value::as_str)
            .and_then(|q| gql::parse_root(q, &variables).ok())
            .map_or_else(|| "graphql".to_owned(), |root| root.name);
    }
    path.split('/')
        .filter(|s| !s.is_empty())
        .nth(2)
        .unwrap_or(path)
        .to_owned()
}

/// Logs every request ([`crate::RequestSeen`]) and answers the next n with the injected status,
/// whatever they are.
async fn inject(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large for the fake").into_response();
    };
    let operation = operation_of(parts.uri.path(), &body);
    let request = Request::from_parts(parts, axum::body::Body::from(body));
    let at = chrono::Utc::now();
    let response = answer(&shared, request, next).await;
    shared.lock().requests.push(crate::RequestSeen {
        at,
        operation,
        status: response.status().as_u16(),
    });
    response
}

async fn answer(shared: &Shared, request: Request, next: Next) -> Response {
    let injected = {
        let mut st = shared.lock();
        match st.inject.as_mut() {
            Some(i) if i.remaining > 0 => {
                i.remaining -= 1;
                Some((i.status, i.retry_after))
            }
            _ => None,
        }
    };
    let Some((status, retry_after)) = injected else {
        return next.run(request).await;
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The REST v2 problem shape RunPod documents for 429; the GraphQL one is [U].
    let body = json!({"title": status.canonical_reason().unwrap_or("Error"), "status": status.as_u16(), "detail": "injected by the fake"});
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(after) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
    }
    response
}

fn graphql_error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    let mut body = json!({"errors": [{"message": message}]});
    if let Some(field) = field {
        body["data"] = json!({ field: null });
    }
    (status, axum::Json(body)).into_response()
}

/// GraphQL accepts `Authorization: Bearer KEY` (runpod-python) or `?api_key=KEY` (the docs).
fn graphql_authorised(shared: &Shared, headers: &HeaderMap, query: Option<&str>) -> bool {
    let key = shared.config.api_key.as_str();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.strip_prefix("Bearer ").is_some_and(|k| k.trim() == key));
    let in_query = query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "api_key" && v == key)
    });
    bearer || in_query
}

async fn graphql(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !graphql_authorised(&shared, &headers, query.as_deref()) {
        return graphql_error(StatusCode::UNAUTHORIZED, "Unauthorized", None);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return graphql_error(
            StatusCode::BAD_REQUEST,
            "Body must be JSON {\"query\", \"variables\"}",
            None,
        );
    };
    let Some(text) = request.get("query").and_then(Value::as_str) else {
        return graphql_error(StatusCode::BAD_REQUEST, "Must provide query string.", None);
    };
    let variables = request
        .get("variables")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let root = match gql::parse_root(text, &variables) {
        Ok(root) => root,
        Err(message) => return graphql_error(StatusCode::BAD_REQUEST, &message, None),
    };
    let key = root.response_key.as_str();
    let input = root.args.get("input").cloned().unwrap_or(Value::Null);
    let result: Result<Value, String> = match root.name.as_str() {
        "podFindAndDeployOnDemand" => pods::deploy(&shared, &input),
        // A scalar result with no selection set; runpodctl only checks the key is there.
        "podTerminate" => pod_id(&input)
            .and_then(|id| pods::terminate(&shared, &id))
            .map(|()| Value::Null),
        "pod" => pod_id(&input).map(|id| pods::get(&shared, &id)),
        "myself" if root.rest.contains("pods") => Ok(json!({"pods": pods::list(&shared)})),
        other => {
            return graphql_error(
                StatusCode::BAD_REQUEST,
                &format!("Cannot query field \"{other}\" in this fake."),
                None,
            );
        }
    };
    match result {
        Ok(value) => {
            let mut data = Map::new();
            data.insert(key.to_owned(), value);
            axum::Json(json!({ "data": data })).into_response()
        }
        Err(message) => graphql_error(StatusCode::OK, &message, Some(key)),
    }
}

fn pod_id(input: &Value) -> Result<String, String> {
    input
        .get("podId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "input.podId is required".into())
}

/// Serverless accepts `Authorization: Bearer KEY` (SDK) or the raw key (operation reference).
fn serverless_authorised(shared: &Shared, headers: &HeaderMap) -> bool {
    let key = shared.config.api_key.as_str();
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim() == key || v.strip_prefix("Bearer ").is_some_and(|k| k.trim() == key)
        })
}

fn plain_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// Auth, then the endpoint must exist.
fn serverless_guard<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
    endpoint: &str,
) -> Result<&'a crate::EndpointSpec, (StatusCode, &'static str)> {
    if !serverless_authorised(shared, headers) {
        return Err((StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    jobs::endpoint(shared, endpoint).ok_or((StatusCode::NOT_FOUND, "endpoint not found"))
}

async fn run(
    State(shared): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((status, message)) = serverless_guard(&shared, &headers, &endpoint) {
        return plain_error(status, message);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return plain_error(StatusCode::BAD_REQUEST, "body must be JSON");
    };
    match jobs::run(&shared, &endpoint, &body) {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(message) => plain_error(StatusCode::BAD_REQUEST, &message),
    }
}

async fn status(
    State(shared): State<Arc<Shared>>,
    Path((endpoint, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, message)) = serverless_guard(&shared, &headers, &endpoint) {
        return plain_error(status, message);
    }
    match jobs::status(&shared, &endpoint, &id) {
        Some(body) => axum::Json(body).into_response(),
        None => plain_error(StatusCode::NOT_FOUND, "job not found"),
    }
}

async fn cancel(
    State(shared): State<Arc<Shared>>,
    Path((endpoint, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, message)) = serverless_guard(&shared, &headers, &endpoint) {
        return plain_error(status, message);
    }
    match jobs::cancel(&shared, &endpoint, &id) {
        Some(body) => axum::Json(body).into_response(),
        None => plain_error(StatusCode::NOT_FOUND, "job not found"),
    }
}

async fn health(
    State(shared): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
) -> Response {
    match serverless_guard(&shared, &headers, &endpoint) {
        Ok(spec) => axum::Json(jobs::health(&shared, spec)).into_response(),
        Err((status, message)) => plain_error(status, message),
    }
}
