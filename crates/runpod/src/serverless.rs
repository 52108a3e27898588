//! RunPod Serverless queue endpoints (api-contracts.md §2): `POST /run`, `GET /status/{id}`,
//! `POST /cancel/{id}`, `GET /health` under `{base_url}/{endpoint_id}`.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use crate::error::{Result, RunpodError, truncate_body};
use crate::graphql::redacted_url;
use crate::http::{self, Answer};
use crate::retry::{Idempotency, RetrySettings};

pub struct ServerlessSettings {
    /// Default `https://api.runpod.ai/v2`; the endpoint id is appended.
    pub base_url: Url,
    pub endpoint_id: String,
    pub api_key: SecretString,
    /// Per attempt, connect to last byte.
    pub timeout: Duration,
    pub retry: RetrySettings,
}

impl ServerlessSettings {
    pub const DEFAULT_BASE_URL: &'static str = "https://api.runpod.ai/v2";

    pub fn new(endpoint_id: impl Into<String>, api_key: SecretString) -> Self {
        Self {
            base_url: Url::parse(Self::DEFAULT_BASE_URL).expect("static URL"),
            endpoint_id: endpoint_id.into(),
            api_key,
            timeout: Duration::from_secs(30),
            retry: RetrySettings::default(),
        }
    }
}

impl fmt::Debug for ServerlessSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerlessSettings")
            .field("base_url", &redacted_url(&self.base_url))
            .field("endpoint_id", &self.endpoint_id)
            .field("api_key", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// The `policy` of a job. RunPod's documented bounds: `executionTimeout` 5 s to 7 days (default
/// 10 min), `ttl` 10 s to 7 days (default 24 h); after the TTL `/status` answers 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub execution_timeout_ms: u64,
    pub ttl_ms: u64,
}

/// What `/run` answers: the job's id and its first state (normally `InQueue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    pub id: String,
    pub status: JobState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    InQueue,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    /// Documented but unused on the wire (`RUNNING`) or new; kept as text.
    Other(String),
}

impl JobState {
    pub fn parse(text: &str) -> Self {
        match text {
            "IN_QUEUE" => Self::InQueue,
            "IN_PROGRESS" => Self::InProgress,
            "COMPLETED" => Self::Completed,
            "FAILED" => Self::Failed,
            "CANCELLED" => Self::Cancelled,
            "TIMED_OUT" => Self::TimedOut,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The states RunPod's SDK treats as final.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }
}

/// `/status/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    pub id: String,
    pub state: JobState,
    /// `executionTime`: how long the handler ran.
    pub execution_time_ms: Option<u64>,
    /// `delayTime`: how long the job waited for a worker.
    pub delay_time_ms: Option<u64>,
    pub output: Option<Value>,
    /// `error`: a string (a JSON-encoded object when the handler raised); a non-string error
    /// value is kept as its JSON text.
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    id: String,
    status: String,
    #[serde(default)]
    execution_time: Option<u64>,
    #[serde(default)]
    delay_time: Option<u64>,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

/// `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Health {
    #[serde(default)]
    pub jobs: HealthJobs,
    #[serde(default)]
    pub workers: HealthWorkers,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HealthJobs {
    pub completed: u64,
    pub failed: u64,
    pub in_progress: u64,
    pub in_queue: u64,
    pub retried: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HealthWorkers {
    pub idle: u64,
    pub running: u64,
}

/// The client for one serverless endpoint. Cheap to clone.
#[derive(Clone)]
pub struct ServerlessClient {
    http: reqwest::Client,
    /// `{base_url}/{endpoint_id}/`, ready for `join`.
    endpoint: Url,
    api_key: SecretString,
    retry: RetrySettings,
}

impl fmt::Debug for ServerlessClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerlessClient")
            .field("endpoint", &redacted_url(&self.endpoint))
            .field("api_key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl ServerlessClient {
    pub fn new(settings: ServerlessSettings) -> Self {
        let mut endpoint = settings.base_url;
        endpoint
            .path_segments_mut()
            .expect("an http(s) base URL")
            .pop_if_empty()
            .push(&settings.endpoint_id)
            .push("");
        Self {
            http: http::build_client(settings.timeout),
            endpoint,
            api_key: settings.api_key,
            retry: settings.retry,
        }
    }

    /// `POST /run`. A create: not repeated once the request may have reached RunPod (a repeat
    /// could run the job twice; see `crate::retry`).
    pub async fn run(&self, input: Value, policy: Policy) -> Result<JobRef> {
        let body = json!({
            "input": input,
            "policy": {"executionTimeout": policy.execution_timeout_ms, "ttl": policy.ttl_ms},
        });
        let url = self.url(&["run"]);
        let answer = self
            .send("run", Idempotency::Create, || {
                self.http.post(url.clone()).json(&body)
            })
            .await?;
        let status = expect_ok(answer)?;
        let wire: WireStatus = decode(&status)?;
        Ok(JobRef {
            id: wire.id,
            status: JobState::parse(&wire.status),
        })
    }

    /// `GET /status/{id}`; `None` when RunPod does not know the job (never did, or its TTL or
    /// result retention ran out).
    pub async fn status(&self, id: &str) -> Result<Option<JobStatus>> {
        let url = self.url(&["status", id]);
        let answer = self
            .send("status", Idempotency::Idempotent, || {
                self.http.get(url.clone())
            })
            .await?;
        if answer.status == 404 {
            return Ok(None);
        }
        let body = expect_ok(answer)?;
        let wire: WireStatus = decode(&body)?;
        let error = wire.error.and_then(|e| match e {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        });
        Ok(Some(JobStatus {
            id: wire.id,
            state: JobState::parse(&wire.status),
            execution_time_ms: wire.execution_time,
            delay_time_ms: wire.delay_time,
            output: wire.output.filter(|v| !v.is_null()),
            error,
        }))
    }

    /// `POST /cancel/{id}`. Idempotent: cancelling a finished or unknown job is `Ok`.
    pub async fn cancel(&self, id: &str) -> Result<()> {
        let url = self.url(&["cancel", id]);
        let answer = self
            .send("cancel", Idempotency::Idempotent, || {
                self.http.post(url.clone())
            })
            .await?;
        if answer.status == 404 {
            return Ok(());
        }
        expect_ok(answer).map(drop)
    }

    /// `GET /health`: job counts by state and worker counts.
    pub async fn health(&self) -> Result<Health> {
        let url = self.url(&["health"]);
        let answer = self
            .send("health", Idempotency::Idempotent, || {
                self.http.get(url.clone())
            })
            .await?;
        decode(&expect_ok(answer)?)
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .expect("an http(s) base URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn send(
        &self,
        op: &'static str,
        idempotency: Idempotency,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Answer> {
        http::send(op, &self.retry, idempotency, || {
            build().bearer_auth(self.api_key.expose_secret())
        })
        .await
    }
}

/// The body of a 2xx answer; 404 → `NotFound`, other statuses → `Http` or `Api`.
fn expect_ok(answer: Answer) -> Result<Vec<u8>> {
    match answer.status {
        200..=299 => Ok(answer.body),
        404 => Err(RunpodError::NotFound),
        400 | 422 => Err(RunpodError::Api(truncate_body(&answer.body))),
        status => Err(RunpodError::Http {
            status,
            body: truncate_body(&answer.body),
        }),
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| RunpodError::Decode(format!("{e}: {}", truncate_body(body))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_debug() {
        let mut settings = ServerlessSettings::new("ep-1", SecretString::from("rpa_secret"));
        settings.base_url = Url::parse("http://127.0.0.1:9/v2/").unwrap();
        assert!(!format!("{settings:?}").contains("rpa_secret"));
        let client = ServerlessClient::new(settings);
        assert!(!format!("{client:?}").contains("rpa_secret"));
        assert_eq!(
            client.url(&["status", "abc"]).as_str(),
            "http://127.0.0.1:9/v2/ep-1/status/abc"
        );
        assert_eq!(
            client.url(&["run"]).as_str(),
            "http://127.0.0.1:9/v2/ep-1/run"
        );
    }

    #[test]
    fn terminal_states() {
        for (text, terminal) in [
            ("IN_QUEUE", false),
            ("IN_PROGRESS", false),
            ("COMPLETED", true),
            ("FAILED", true),
            ("CANCELLED", true),
            ("TIMED_OUT", true),
            ("RUNNING", false),
        ] {
            assert_eq!(JobState::parse(text).is_terminal(), terminal, "{text}");
        }
    }
}
