//! One error type for every ai-toolkit call, with the predicates callers decide on.

/// Everything an ai-toolkit call can fail with. Messages never carry the token; bodies are
/// truncated.
#[derive(Debug, thiserror::Error)]
pub enum AiToolkitError {
    /// HTTP 401 `{"error":"Unauthorized"}`: `AI_TOOLKIT_AUTH` is set and our token is missing or
    /// wrong. Not retried.
    #[error("ai-toolkit rejected the token (HTTP 401); check LORAFORGE_AITOOLKIT_TOKEN")]
    Unauthorized,
    /// HTTP 404: no such job, dataset or file.
    #[error("not found on ai-toolkit: {0}")]
    NotFound(String),
    /// HTTP 409, e.g. `{"error":"Job name already exists"}`.
    #[error("conflict on ai-toolkit: {0}")]
    Conflict(String),
    /// HTTP 400 or another 4xx: the request is wrong and repeating it will not help.
    #[error("ai-toolkit refused the request (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    /// HTTP 5xx.
    #[error("ai-toolkit failed (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    /// Connecting, sending or receiving failed, timeouts included. URLs are stripped.
    #[error("could not reach ai-toolkit: {0}")]
    Transport(String),
    /// The answer was not the documented shape.
    #[error("unexpected answer from ai-toolkit: {0}")]
    Decode(String),
    /// A download was larger than the caller allows.
    #[error("the file is larger than the {limit} bytes allowed")]
    TooLarge { limit: u64 },
    /// Writing a download to disk failed.
    #[error("writing a download failed: {0}")]
    Io(String),
}

impl AiToolkitError {
    /// Trying the same call again later may succeed: 5xx and transport failures.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Server { .. } | Self::Transport(_))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict(_))
    }
}

pub type Result<T, E = AiToolkitError> = std::result::Result<T, E>;

/// At most this many bytes of an answer's body go into an error.
const BODY_LIMIT: usize = 512;

/// The `error` of an `{"error": "..."}` body, else the body itself, truncated.
pub(crate) fn error_message(body: &[u8]) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    truncate(&text)
}

pub(crate) fn truncate(text: &str) -> String {
    if text.len() <= BODY_LIMIT {
        return text.to_owned();
    }
    let mut end = BODY_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A transport error's text without the URL, with its causes.
pub(crate) fn transport(error: reqwest::Error) -> AiToolkitError {
    AiToolkitError::Transport(loraforge_stdx::http_error_text(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_the_error_field() {
        assert_eq!(
            error_message(br#"{"error":"Job name already exists"}"#),
            "Job name already exists"
        );
        assert_eq!(error_message(b"plain text"), "plain text");
        let long = "x".repeat(2000);
        assert!(error_message(long.as_bytes()).len() < 600);
    }

    #[test]
    fn only_server_and_transport_failures_are_retried() {
        assert!(
            AiToolkitError::Server {
                status: 502,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(AiToolkitError::Transport("x".into()).is_retryable());
        assert!(!AiToolkitError::Unauthorized.is_retryable());
        assert!(!AiToolkitError::NotFound("x".into()).is_retryable());
        assert!(!AiToolkitError::Conflict("x".into()).is_retryable());
    }
}
