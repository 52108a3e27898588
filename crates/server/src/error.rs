//! The one place where errors become HTTP responses. Every error body is
//! `{"error": {"code": "snake_case", "message": "…", …details}}`; codes are stable and listed in
//! the README. 500s are logged with context and never show internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use loraforge_checks::{DatasetReport, Problem};
use loraforge_db::DbError;
use loraforge_domain::TextError;
use loraforge_fetch::FetchError;
use loraforge_storage::StorageError;

use crate::downloads::DownloadFailures;
use crate::intake::IntakeError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the error object (e.g. `resets_at`, `field`, `images`).
    pub details: Map<String, Value>,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            retry_after: None,
        }
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    /// A failure that is ours, not the caller's: logged in full, shown as a generic message.
    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "something went wrong on our side; try again, and report it if it keeps happening",
        )
    }
    pub fn unavailable(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %err, "{context}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "a backing service is unavailable right now; try again in a moment",
        )
        .retry(5)
    }
    pub fn retry(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        body.extend(self.details);
        let mut resp = (self.status, Json(json!({ "error": body }))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Text a client sent that breaks its field's rule (`loraforge_domain::text`): 400 with `code`
/// (`invalid_name`, `invalid_caption`, …), plus the stable `reason` (`empty`, `too_long`,
/// `control_character`, `bidi_control`, `invisible_character`), the `field`, and for a refused
/// character that `character` (`U+202E`) and its 1-based `position` in the text as sent.
pub fn invalid_text(code: &'static str, e: &TextError) -> ApiError {
    let mut err = ApiError::bad_request(code, e.to_string())
        .with("reason", e.code())
        .with("field", e.field());
    if let Some((character, position)) = e.character() {
        err = err.with("character", character).with("position", position);
    }
    err
}

/// 413 `payload_too_large` for a body over `limit` bytes (declared or read).
pub fn payload_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is too large for this endpoint; send at most {limit} bytes"),
    )
    .with("limit_bytes", limit)
}

/// A body that could not be read: too large (413), too slow (408) or broken off (400).
pub fn body_error(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large for this endpoint",
        );
    }
    if crate::http::is_body_timeout(&e) {
        return body_timeout();
    }
    ApiError::bad_request(
        "invalid_request",
        format!("could not read the request body: {}", e.body_text()),
    )
}

/// 408 `body_timeout`: the client paused too long in the middle of its request body.
pub fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        "the request body stopped arriving; send it again without long pauses",
    )
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => ApiError::not_found("LoRA"),
            DbError::DuplicateName(_) => {
                ApiError::new(StatusCode::CONFLICT, "duplicate_name", e.to_string())
            }
            DbError::DatasetNotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "dataset_not_found",
                "dataset not found; upload one with POST /api/v1/datasets and use its dataset_id",
            ),
            DbError::IdempotencyKeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body; use a new key for a new request",
            ),
            DbError::Transition(t) => {
                ApiError::new(StatusCode::CONFLICT, "invalid_state", t.to_string())
                    .with("training_status", t.from.as_str())
            }
            DbError::MonthlyLimitReached { .. } => {
                // Handlers that can hit this build the full 429 themselves (they know resets_at).
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "monthly_limit_reached",
                    e.to_string(),
                )
            }
            DbError::DatasetQuotaReached(q) => {
                // The intake builds the full 429 itself (it knows resets_at).
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "dataset_quota_reached",
                    e.to_string(),
                )
                .with("quota", q.kind.as_str())
                .with("limit", q.limit)
                .with("used", q.used)
            }
            DbError::InsufficientCredits { summary, price } => {
                use crate::quotes::usd;
                ApiError::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "insufficient_credits",
                    format!(
                        "this training is quoted at ${} and you have ${} of credits available (${} held for trainings in progress); ask an admin for credits or lower steps or resolution",
                        usd(price),
                        usd(summary.available),
                        usd(summary.reserved)
                    ),
                )
                .with("balance_micros", summary.balance.0)
                .with("balance_usd", usd(summary.balance))
                .with("reserved_micros", summary.reserved.0)
                .with("available_micros", summary.available.0)
                .with("available_usd", usd(summary.available))
                .with("price_micros", price.0)
                .with("price_usd", usd(price))
            }
            e if e.is_retryable() => ApiError::unavailable("database unavailable", &e),
            e => ApiError::internal("database error", &e),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::LinkExpired => {
                ApiError::new(StatusCode::FORBIDDEN, "link_expired", e.to_string())
            }
            StorageError::BadSignature => {
                ApiError::new(StatusCode::FORBIDDEN, "invalid_signature", e.to_string())
            }
            e if e.is_not_found() => ApiError::not_found("file"),
            StorageError::NotServedLocally | StorageError::InvalidKey(..) => {
                ApiError::not_found("file")
            }
            e if e.is_retryable() => ApiError::unavailable("storage unavailable", &e),
            e => ApiError::internal("storage error", &e),
        }
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Rejected(report) => invalid_dataset_report(&report),
            IntakeError::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "the server is busy checking other uploads; nothing was stored — send the same upload again in a minute",
            )
            .retry(30),
            IntakeError::Storage(e) => e.into(),
            IntakeError::Db(e) => e.into(),
            IntakeError::QuotaReached {
                exceeded,
                window,
                now,
            } => crate::quota::dataset_quota_reached(exceeded, window, now),
            IntakeError::Internal(msg) => ApiError::internal("dataset intake failed", &msg),
        }
    }
}

/// Request-level download refusals; per-URL failures arrive as [`DownloadFailures`].
impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Disabled => {
                ApiError::new(StatusCode::FORBIDDEN, "url_intake_disabled", e.to_string())
            }
            e if e.is_internal() => ApiError::internal("URL download failed", &e),
            e => invalid_dataset(vec![e.to_string()], Vec::new(), Vec::new()),
        }
    }
}

impl From<DownloadFailures> for ApiError {
    fn from(f: DownloadFailures) -> Self {
        if let Some(e) = f
            .outcomes
            .iter()
            .find_map(|(_, e)| e.as_ref().filter(|e| e.is_internal()))
        {
            return ApiError::internal("URL download failed", e);
        }
        let problems = f
            .outcomes
            .iter()
            .filter_map(|(_, e)| e.as_ref().map(ToString::to_string))
            .collect();
        let images = f
            .outcomes
            .iter()
            .map(|(url, e)| {
                let errors: Vec<Value> = e.iter().map(|e| json!({"code": e.code(), "message": e.to_string()})).collect();
                json!({"file_name": crate::downloads::display_name(url), "url": url, "ok": e.is_none(), "errors": errors, "warnings": []})
            })
            .collect();
        invalid_dataset(problems, images, Vec::new())
    }
}

/// 422 `invalid_dataset` for a set that failed the checks: every image's result.
fn invalid_dataset_report(report: &DatasetReport) -> ApiError {
    let problem = |p: &Problem| json!({"code": p.code, "message": p.message});
    let mut problems: Vec<String> = report.errors.iter().map(|p| p.message.clone()).collect();
    problems.extend(
        report
            .images
            .iter()
            .flat_map(|i| i.errors.iter().map(|p| p.message.clone())),
    );
    let images = report
        .images
        .iter()
        .map(|i| {
            json!({
                "file_name": i.file_name,
                "ok": i.errors.is_empty(),
                "errors": i.errors.iter().map(problem).collect::<Vec<_>>(),
                "warnings": i.warnings.iter().map(problem).collect::<Vec<_>>(),
            })
        })
        .collect();
    invalid_dataset(
        problems,
        images,
        report.errors.iter().map(problem).collect(),
    )
}

/// Problems named one by one in a message; the rest are counted, so an error body stays small
/// whatever a request holds (each image's own problems are in `images`).
pub const MAX_LISTED_PROBLEMS: usize = 10;

/// `problems` joined with "; ", at most [`MAX_LISTED_PROBLEMS`] of them and a count of the rest.
pub fn list_problems(problems: &[String]) -> String {
    let shown = problems.len().min(MAX_LISTED_PROBLEMS);
    let mut text = problems[..shown].join("; ");
    if problems.len() > shown {
        text.push_str(&format!("; and {} more", problems.len() - shown));
    }
    text
}

/// The one shape of a refused dataset: a sentence listing the problems (the first
/// [`MAX_LISTED_PROBLEMS`]), plus `images` (each file's result) and `errors` (problems of the
/// set as a whole).
pub fn invalid_dataset(
    problems: Vec<String>,
    images: Vec<Value>,
    set_errors: Vec<Value>,
) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_dataset",
        format!(
            "the dataset was not accepted and nothing was stored: {}",
            list_problems(&problems)
        ),
    )
    .with("images", images)
    .with("errors", set_errors)
}

/// The stable code of an error response that no handler of ours wrote (axum's extractor
/// rejections, the 405 of a route without that method, a layer's 408 or 413): by status.
fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "service_unavailable",
        504 => "timeout",
        400..=499 => "invalid_request",
        _ => "internal_error",
    }
}

/// Largest plain-text error body kept as the message of the JSON error that replaces it.
const MAX_REJECTION_TEXT: usize = 300;

/// Middleware: every error response leaves in the one JSON shape. Responses our handlers built
/// (`application/json`) pass untouched; any other 4xx/5xx — axum's plain-text rejections (bad
/// path or query, bad JSON, wrong content type, body too large), the empty 405, a timeout — is
/// rewritten with a code chosen by status and, for 4xx, axum's explanation as the message.
/// Headers such as `Allow` and `Retry-After` are kept.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4 * MAX_REJECTION_TEXT)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let message = match (status.as_u16(), text) {
        (405, _) => {
            "this route does not take this method; the Allow header lists the ones it takes"
                .to_owned()
        }
        (400..=499, Some(t)) => t.chars().take(MAX_REJECTION_TEXT).collect(),
        (400..=499, None) => status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_owned(),
        (503, _) => "the service is unavailable right now; try again in a moment".to_owned(),
        (504, _) => "the request took too long and was stopped; try again".to_owned(),
        _ => "something went wrong on our side; try again, and report it if it keeps happening"
            .to_owned(),
    };
    let fresh = ApiError::new(status, code_for_status(status), message).into_response();
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        fresh_parts.headers[header::CONTENT_TYPE].clone(),
    );
    Response::from_parts(parts, body)
}

/// The 500 of a handler that panicked; the panic's message goes to the log, not to the caller.
pub fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    ApiError::internal("handler panicked", &message).into_response()
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;
    use tower_http::catch_panic::CatchPanicLayer;

    use super::*;

    /// A router with the same two outer layers as `api_router`, and handlers that fail the ways
    /// layers and libraries do.
    fn router() -> Router {
        Router::new()
            .route(
                "/timeout",
                get(|| async { (StatusCode::REQUEST_TIMEOUT, "") }),
            )
            .route("/gateway", get(|| async { StatusCode::GATEWAY_TIMEOUT }))
            .route(
                "/plain500",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "db password is hunter2") }),
            )
            .route(
                "/ours",
                get(|| async { ApiError::bad_request("invalid_name", "names are short") }),
            )
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/panic",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("the payload says why");
                    }
                    "unreachable"
                }),
            )
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(axum::middleware::map_response(json_errors))
    }

    async fn call(path: &str) -> (StatusCode, Option<String>, String) {
        let resp = router()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn layer_made_errors_timeouts_and_panics_become_the_json_shape() {
        for (path, status, code) in [
            ("/timeout", 408, "request_timeout"),
            ("/gateway", 504, "timeout"),
            ("/plain500", 500, "internal_error"),
            ("/panic", 500, "internal_error"),
            ("/ours", 400, "invalid_name"),
        ] {
            let (got, ct, body) = call(path).await;
            assert_eq!(got.as_u16(), status, "{path}: {body}");
            assert_eq!(ct.as_deref(), Some("application/json"), "{path}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], code, "{path}: {body}");
            assert!(
                !body.contains("hunter2"),
                "a 5xx never shows its text: {body}"
            );
            assert!(
                !body.contains("payload says"),
                "nor a panic's message: {body}"
            );
        }
        let (got, ct, body) = call("/ok").await;
        assert_eq!(
            (got.as_u16(), ct.as_deref(), body.as_str()),
            (200, Some("text/plain; charset=utf-8"), "fine")
        );
    }

    #[test]
    fn a_panics_message_is_read_from_either_payload_type() {
        for payload in [
            Box::new("static str") as Box<dyn std::any::Any + Send>,
            Box::new(String::from("formatted")),
            Box::new(42_u8),
        ] {
            assert_eq!(panic_response(payload).status(), 500);
        }
    }
}
