//! One HTTP exchange with retries. Turns transport failures and the statuses every Replicate
//! route uses the same way (401/403, 429, 5xx) into [`ReplicateError`]s; everything else (2xx,
//! 404, other 4xx) is handed back to the caller to read.

use std::time::{Duration, SystemTime};

use crate::error::{ReplicateError, truncate_body};
use crate::retry::{self, Idempotency, RetrySettings};

pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// An error and whether the request certainly never reached the server.
struct Failure {
    error: ReplicateError,
    not_sent: bool,
}

pub(crate) fn build_client(timeout: Duration) -> Result<reqwest::Client, ReplicateError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(transport)
}

/// Sends the request `build` makes, repeating per `retry` and `idempotency`. `op` names the call
/// in logs.
pub(crate) async fn send(
    op: &'static str,
    retry: &RetrySettings,
    idempotency: Idempotency,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Answer, ReplicateError> {
    let mut attempt = 0;
    loop {
        let failure = match once(build()).await {
            Ok(answer) => return Ok(answer),
            Err(failure) => failure,
        };
        let may_repeat = failure.error.is_retryable()
            && (idempotency == Idempotency::Idempotent || failure.not_sent);
        if !may_repeat || attempt >= retry.max_retries {
            return Err(failure.error);
        }
        let hint = match &failure.error {
            ReplicateError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        let wait = retry.delay(attempt, hint);
        tracing::debug!(op, attempt, wait_ms = wait.as_millis() as u64, error = %failure.error, "retrying Replicate call");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

async fn once(request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
    let response = request.send().await.map_err(|e| Failure {
        not_sent: e.is_connect(),
        error: transport(e),
    })?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| Failure {
        not_sent: false,
        error: transport(e),
    })?;
    let error = match status {
        401 | 403 => ReplicateError::Unauthorized(status),
        429 => ReplicateError::RateLimited {
            retry_after: retry::hint(&headers, &body, SystemTime::now()),
        },
        s if s >= 500 => ReplicateError::Server {
            status: s,
            body: truncate_body(&body),
        },
        _ => {
            return Ok(Answer {
                status,
                body: body.to_vec(),
            });
        }
    };
    Err(Failure {
        error,
        not_sent: false,
    })
}

/// A transport error's text without the URL, with its causes.
pub(crate) fn transport(error: reqwest::Error) -> ReplicateError {
    ReplicateError::Transport(loraforge_stdx::http_error_text(error))
}
