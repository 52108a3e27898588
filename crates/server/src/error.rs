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

/// A body that could not be read: too large (413) or broken off (400).
pub fn body_error(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large for this endpoint",
        );
    }
    ApiError::bad_request(
        "invalid_request",
        format!("could not read the request body: {}", e.body_text()),
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
            IntakeError::Storage(e) => e.into(),
            IntakeError::Db(e) => e.into(),
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

/// The one shape of a refused dataset: a sentence listing every problem, plus `images` (each
/// file's result) and `errors` (problems of the set as a whole).
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
            problems.join("; ")
        ),
    )
    .with("images", images)
    .with("errors", set_errors)
}
