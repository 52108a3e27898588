use std::time::Duration;

/// Everything a RunPod call can fail with. Messages never contain the API key nor a URL (a key
/// may be configured as `?api_key=`), and bodies are truncated.
#[derive(Debug, thiserror::Error)]
pub enum RunpodError {
    /// HTTP 401: the key is missing, wrong or revoked. Not retried.
    #[error("RunPod rejected the API key (HTTP 401)")]
    Unauthorized,
    /// HTTP 429. `retry_after` comes from a `Retry-After: <seconds>` header when present.
    #[error("RunPod rate limit hit (HTTP 429){}", retry_after_text(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// No machine can take the requested GPU type/count now ("There are no longer any instances
    /// available with the requested specifications…").
    #[error("RunPod has no capacity: {0}")]
    NoCapacity(String),
    /// The endpoint, pod or job does not exist (HTTP 404 or a "not found" error message).
    #[error("not found on RunPod")]
    NotFound,
    /// An `errors[]` entry in an HTTP 200 GraphQL answer, or a 4xx with a message.
    #[error("RunPod API error: {0}")]
    Api(String),
    /// Any other HTTP status (5xx, unexpected 4xx); `body` is truncated.
    #[error("RunPod answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// Connecting, sending or receiving failed (includes timeouts). URLs are stripped.
    #[error("could not reach RunPod: {0}")]
    Transport(String),
    /// The answer was not the documented shape.
    #[error("unexpected answer from RunPod: {0}")]
    Decode(String),
}

fn retry_after_text(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", retry after {} s", d.as_secs()),
        None => String::new(),
    }
}

impl RunpodError {
    /// Whether trying the same call again later may succeed: 429, 5xx and transport failures.
    /// Whether it is *safe* to repeat is a separate question for creates (see `crate::retry`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Transport(_) => true,
            Self::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The provider is out of the requested GPUs; try another type or later.
    pub fn is_capacity(&self) -> bool {
        matches!(self, Self::NoCapacity(_))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound)
    }
}

pub type Result<T, E = RunpodError> = std::result::Result<T, E>;

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
