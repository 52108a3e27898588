use std::time::Duration;

/// Everything a Replicate call can fail with. Messages never contain the API token and bodies
/// are truncated.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// HTTP 401 (or 403): the token is missing, wrong or revoked. Not retried.
    #[error("Replicate rejected the API token (HTTP {0})")]
    Unauthorized(u16),
    /// HTTP 429 after the retries allowed for the call (none for a create). `retry_after` is the
    /// wait Replicate asked for (header or body), when it said one.
    #[error("Replicate rate limit hit (HTTP 429){}", retry_after_text(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// HTTP 404 on a training or a page.
    #[error("not found on Replicate")]
    NotFound,
    /// HTTP 404 on a create: the model, version or destination does not exist. Carries
    /// Replicate's `detail` (e.g. "The specified training destination does not exist").
    #[error("Replicate refused the training: {0}")]
    Missing(String),
    /// Another 4xx, with Replicate's `detail` when it gave one. Not retried.
    #[error("Replicate answered HTTP {status}: {detail}")]
    Rejected { status: u16, detail: String },
    /// A 5xx; `body` is truncated.
    #[error("Replicate answered HTTP {status}: {body}")]
    Server { status: u16, body: String },
    /// Connecting, sending or receiving failed (includes timeouts).
    #[error("could not reach Replicate: {0}")]
    Transport(String),
    /// The answer was not the documented shape (or a `next` link pointed elsewhere).
    #[error("unexpected answer from Replicate: {0}")]
    Decode(String),
}

fn retry_after_text(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", retry after {} ms", d.as_millis()),
        None => String::new(),
    }
}

impl ReplicateError {
    /// Whether the same call may succeed later: 429, 5xx and transport failures. Whether it is
    /// *safe* to repeat a create is another question (see `crate::retry`).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Server { .. } | Self::Transport(_)
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound)
    }
}

pub type Result<T, E = ReplicateError> = std::result::Result<T, E>;

/// At most this many bytes of an answer's body go into an error.
const BODY_LIMIT: usize = 512;

pub(crate) fn truncate_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= BODY_LIMIT {
        return text.into_owned();
    }
    let mut end = BODY_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Replicate's `detail` from a problem body, else the truncated body.
pub(crate) fn detail(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .map(|d| truncate_body(d.as_bytes()))
        .unwrap_or_else(|| truncate_body(body))
}
