//! One HTTP exchange with retries, shared by both clients. Turns transport failures and the
//! statuses every RunPod API uses the same way (401, 429, 5xx) into [`RunpodError`]s; everything
//! else (200, 404, other 4xx) is handed back to the caller to read.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::error::{RunpodError, truncate_body};
use crate::retry::{Idempotency, RetrySettings};

pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// An error and whether the request certainly never reached the server.
struct Failure {
    error: RunpodError,
    not_processed: bool,
}

pub(crate) fn build_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        .expect("reqwest client with static settings")
}

/// Sends the request `build` makes, repeating per `retry` and `idempotency`. `op` names the call
/// in logs (never a URL: it may carry the key).
pub(crate) async fn send(
    op: &'static str,
    retry: &RetrySettings,
    idempotency: Idempotency,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Answer, RunpodError> {
    let mut attempt = 0;
    loop {
        let failure = match once(build()).await {
            Ok(answer) => return Ok(answer),
            Err(failure) => failure,
        };
        let may_repeat = failure.error.is_retryable()
            && (idempotency == Idempotency::Idempotent || failure.not_processed);
        if !may_repeat || attempt >= retry.max_retries {
            return Err(failure.error);
        }
        let retry_after = match &failure.error {
            RunpodError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        let wait = retry.delay(attempt, retry_after);
        tracing::debug!(op, attempt, wait_ms = wait.as_millis() as u64, error = %failure.error, "retrying RunPod call");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

async fn once(request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
    let response = request.send().await.map_err(|e| Failure {
        not_processed: e.is_connect(),
        error: transport(e),
    })?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await.map_err(|e| Failure {
        not_processed: false,
        error: transport(e),
    })?;
    let error = match status {
        401 => RunpodError::Unauthorized,
        // Not "certainly unprocessed": RunPod does not document GraphQL 429s (see crate::retry).
        429 => RunpodError::RateLimited { retry_after },
        s if s >= 500 => RunpodError::Http {
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
        not_processed: false,
    })
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A transport error's text without the URL (which may carry `?api_key=`), with its causes.
pub(crate) fn transport(error: reqwest::Error) -> RunpodError {
    RunpodError::Transport(loraforge_stdx::http_error_text(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_retry_after_wins() {
        let r = RetrySettings::default();
        assert_eq!(r.delay(0, None), Duration::from_secs(2));
        assert_eq!(r.delay(1, None), Duration::from_secs(4));
        assert_eq!(r.delay(2, None), Duration::from_secs(8));
        assert_eq!(
            r.delay(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            r.delay(0, Some(Duration::from_secs(7200))),
            Duration::from_secs(60)
        );
    }
}
