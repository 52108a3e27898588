//! `GET /metrics`: the Prometheus text format, open unless `LORAFORGE_METRICS_TOKEN` is set.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// The Prometheus text exposition format (version 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus metrics: HTTP requests by route and status with latency histograms, LoRAs by
/// status, the queue, runs by backend and outcome, breakers, alerts (README lists them all).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    params(("Authorization" = Option<String>, Header, description = "`Bearer <LORAFORGE_METRICS_TOKEN>` when that setting is set")),
    responses((status = 200, description = "the Prometheus text format", content_type = "text/plain"),
        (status = 401, description = "metrics_token_required: a token is set and this request did not send it", body = crate::views::ErrorBody),
        (status = 404, description = "metrics_off: this process records no metrics", body = crate::views::ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(endpoint) = state.metrics() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_off",
            "this process records no metrics (the `serve` command serves them)",
        ));
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !endpoint.allows(authorization) {
        return Err(ApiError::unauthorized(
            "metrics_token_required",
            "send `Authorization: Bearer <token>` with the token set in LORAFORGE_METRICS_TOKEN",
        ));
    }
    let body = endpoint.handle().render();
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response())
}
