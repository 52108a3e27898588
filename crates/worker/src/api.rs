//! HTTP: the control plane's three worker routes, errors that say what happened without
//! leaking URLs, and the retry loop every call that may be retried goes through.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde::Serialize;
use url::Url;

use loraforge_domain::RunResult;

use crate::job::{CheckpointBody, FailureBody, Job, ProgressBody, ResultAnswer};

/// Retries after the first try of a call that may be retried.
pub(crate) const RETRIES: u32 = 3;

/// Limit for one control-plane call.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of an error body is read to find its message.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// The worker's HTTP client. Control-plane calls add their own timeout; transfers are bounded by
/// the connect and read timeouts (a stalled transfer fails, a slow one may take its time).
pub(crate) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("loraforge-worker/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Why an HTTP call failed. Holds no URL: the URLs the worker uses carry signatures.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No answer: connect, timeout, broken body. `reqwest::Error` with its URL removed.
    Transport(String),
    /// An answer with a non-success status; `code`/`message` from the API's error body.
    Status {
        status: StatusCode,
        code: Option<String>,
        message: Option<String>,
    },
    /// An answer that cannot be used (a body that does not parse, a download of the wrong size).
    Invalid(String),
}

impl CallError {
    pub fn transport(e: reqwest::Error) -> Self {
        // The chain ("error sending request: client error (Connect): tcp connect error: Connection
        // refused") says what went wrong; only the top level would name the URL.
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let part = s.to_string();
            if !part.is_empty() && !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            source = s.source();
        }
        CallError::Transport(text)
    }

    /// Worth another try: no answer, a 5xx or 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Transport(_) => true,
            CallError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            CallError::Invalid(_) => false,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's `message` (or the status line) for a reason text.
    pub fn message(&self) -> String {
        match self {
            CallError::Status {
                message: Some(m), ..
            } => m.clone(),
            other => other.to_string(),
        }
    }

    /// From a non-success answer: reads a bounded part of the body for the API's error shape.
    pub async fn from_response(mut resp: Response) -> Self {
        let status = resp.status();
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get("error")?.get(name)?.as_str().map(str::to_owned))
        };
        CallError::Status {
            status,
            code: field("code"),
            message: field("message"),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "no answer ({e})"),
            CallError::Status {
                status,
                code,
                message,
            } => {
                write!(f, "HTTP {status}")?;
                match (code, message) {
                    (Some(c), Some(m)) => write!(f, " {c}: {m}"),
                    (Some(c), None) => write!(f, " {c}"),
                    (None, Some(m)) => write!(f, ": {m}"),
                    (None, None) => Ok(()),
                }
            }
            CallError::Invalid(e) => f.write_str(e),
        }
    }
}

/// A call that failed for good, and how many times it was tried.
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: CallError,
    pub tries: u32,
}

/// Runs `call` until it succeeds, fails in a way a retry cannot mend, or has been retried
/// [`RETRIES`] times; the pauses are `first_delay`, then doubled each time.
pub(crate) async fn retrying<T, Fut>(
    what: &str,
    first_delay: Duration,
    mut call: impl FnMut() -> Fut,
) -> Result<T, Failed>
where
    Fut: Future<Output = Result<T, CallError>>,
{
    let mut delay = first_delay;
    let mut tries = 0;
    loop {
        tries += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(error) if error.is_retryable() && tries <= RETRIES => {
                tracing::warn!(%error, retry_in = ?delay, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            Err(error) => return Err(Failed { error, tries }),
        }
    }
}

/// The control plane's worker routes for one job, with the job's bearer token.
pub(crate) struct ControlPlane {
    http: reqwest::Client,
    job_url: Url,
    token: String,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("job_url", &self.job_url.as_str())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// `server` is the base URL (a path prefix is kept).
    pub fn new(
        http: reqwest::Client,
        server: &Url,
        lora_id: &str,
        token: String,
    ) -> Result<Self, String> {
        let mut job_url = server.clone();
        job_url.set_query(None);
        job_url.set_fragment(None);
        job_url
            .path_segments_mut()
            .map_err(|()| format!("the control plane URL {server} cannot have a path"))?
            .pop_if_empty()
            .extend(["api", "v1", "worker", "jobs", lora_id]);
        Ok(Self {
            http,
            job_url,
            token,
        })
    }

    fn route(&self, last: &str) -> Url {
        let mut url = self.job_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(last);
        }
        url
    }

    pub async fn job(&self) -> Result<Job, CallError> {
        let resp = self
            .http
            .get(self.job_url.clone())
            .bearer_auth(&self.token)
            .timeout(API_TIMEOUT)
            .send()
            .await
            .map_err(CallError::transport)?;
        let resp = success(resp).await?;
        let body = resp.bytes().await.map_err(CallError::transport)?;
        serde_json::from_slice(&body)
            .map_err(|e| CallError::Invalid(format!("the job does not parse: {e}")))
    }

    pub async fn progress(&self, body: &ProgressBody) -> Result<(), CallError> {
        self.post("progress", body).await.map(drop)
    }

    pub async fn result(&self, body: &RunResult) -> Result<ResultAnswer, CallError> {
        let resp = self.post("result", body).await?;
        let bytes = resp.bytes().await.map_err(CallError::transport)?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(ResultAnswer {
            status: None,
            error: None,
        }))
    }

    pub async fn checkpoint(&self, body: &CheckpointBody) -> Result<(), CallError> {
        self.post("checkpoint", body).await.map(drop)
    }

    pub async fn failure(&self, body: &FailureBody) -> Result<(), CallError> {
        self.post("failure", body).await.map(drop)
    }

    async fn post(&self, route: &str, body: &impl Serialize) -> Result<Response, CallError> {
        let resp = self
            .http
            .post(self.route(route))
            .bearer_auth(&self.token)
            .json(body)
            .timeout(API_TIMEOUT)
            .send()
            .await
            .map_err(CallError::transport)?;
        success(resp).await
    }
}

/// The response if its status is a success, else its error.
pub(crate) async fn success(resp: Response) -> Result<Response, CallError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(CallError::from_response(resp).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_keep_a_path_prefix_and_encode_the_id() {
        let http = reqwest::Client::new();
        let cp = ControlPlane::new(
            http.clone(),
            &"http://h:1/".parse().unwrap(),
            "01ab",
            "t".into(),
        )
        .unwrap();
        assert_eq!(cp.job_url.as_str(), "http://h:1/api/v1/worker/jobs/01ab");
        assert_eq!(
            cp.route("progress").as_str(),
            "http://h:1/api/v1/worker/jobs/01ab/progress"
        );
        let cp = ControlPlane::new(
            http.clone(),
            &"http://h/lf?x=1".parse().unwrap(),
            "a/b",
            "t".into(),
        )
        .unwrap();
        assert_eq!(cp.job_url.as_str(), "http://h/lf/api/v1/worker/jobs/a%2Fb");
        let cp = ControlPlane::new(
            http,
            &"http://h/lf/".parse().unwrap(),
            "x",
            "secret-token".into(),
        )
        .unwrap();
        assert_eq!(
            cp.route("result").as_str(),
            "http://h/lf/api/v1/worker/jobs/x/result"
        );
        assert!(!format!("{cp:?}").contains("secret-token"));
    }

    #[test]
    fn retryable_errors() {
        let status = |s: u16| CallError::Status {
            status: StatusCode::from_u16(s).unwrap(),
            code: None,
            message: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(500).is_retryable());
        assert!(status(429).is_retryable());
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!status(s).is_retryable(), "{s}");
        }
        assert!(CallError::Transport("reset".into()).is_retryable());
        assert!(!CallError::Invalid("size".into()).is_retryable());
    }

    #[test]
    fn errors_read_well() {
        let e = CallError::Status {
            status: StatusCode::CONFLICT,
            code: Some("job_not_active".into()),
            message: Some("the job was cancelled".into()),
        };
        assert_eq!(
            e.to_string(),
            "HTTP 409 Conflict job_not_active: the job was cancelled"
        );
        assert_eq!(e.message(), "the job was cancelled");
        let e = CallError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: None,
            message: None,
        };
        assert_eq!(e.to_string(), "HTTP 503 Service Unavailable");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_three_times_with_doubling_pauses() {
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let r: Result<(), Failed> = retrying("test", Duration::from_secs(2), || {
            calls += 1;
            async { Err(CallError::Transport("refused".into())) }
        })
        .await;
        let failed = r.unwrap_err();
        assert_eq!((calls, failed.tries), (4, 4));
        // 2 + 4 + 8 seconds of (paused, auto-advanced) time.
        assert_eq!(started.elapsed(), Duration::from_secs(14));

        let mut calls = 0;
        let r: Result<(), Failed> = retrying("test", Duration::from_secs(2), || {
            calls += 1;
            async {
                Err(CallError::Status {
                    status: StatusCode::CONFLICT,
                    code: None,
                    message: None,
                })
            }
        })
        .await;
        assert_eq!((calls, r.unwrap_err().tries), (1, 1));

        let mut calls = 0;
        let r = retrying("test", Duration::from_millis(1), || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(CallError::Transport("reset".into()))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }
}
