//! A typed client of ai-toolkit's web UI API (`shared/research/api-contracts.md` §4): settings,
//! datasets, jobs, the GPU queue and file downloads.
//!
//! Every call has a timeout; a call that failed with a 5xx or a transport error is repeated
//! after 2, 4 and 8 s (by default). That is safe for every route we use: reads, starts and stops
//! are idempotent, a dataset create of an existing name answers it again, an upload overwrites
//! the same file names, and a job create that did reach the server is answered 409 on the
//! repeat, which the caller resolves by finding its own job by name.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::error::{AiToolkitError, Result, error_message, transport};

/// Where ai-toolkit is and how patient to be with it.
#[derive(Clone)]
pub struct ClientSettings {
    /// The UI's base URL (`http://host:8675`), without `/api`.
    pub base_url: Url,
    /// `AI_TOOLKIT_AUTH` of the server, sent as `Authorization: Bearer <token>`; `None` when the
    /// server checks nothing.
    pub token: Option<SecretString>,
    /// Per call (downloads: per call too, the whole body included). Default 30 s.
    pub timeout: Duration,
    /// Repeats of a call that failed with a 5xx or a transport error. Default 3.
    pub max_retries: u32,
    /// The wait before the first repeat; doubled each time. Default 2 s.
    pub retry_delay: Duration,
    /// Downloads' timeout (a final LoRA is hundreds of MB). Default 10 min.
    pub download_timeout: Duration,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("base_url", &self.base_url.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_delay", &self.retry_delay)
            .field("download_timeout", &self.download_timeout)
            .finish()
    }
}

impl ClientSettings {
    pub fn new(base_url: Url, token: Option<SecretString>) -> Self {
        Self {
            base_url,
            token,
            timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_delay: Duration::from_secs(2),
            download_timeout: Duration::from_secs(600),
        }
    }
}

/// `GET /api/settings`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ToolkitSettings {
    #[serde(rename = "TRAINING_FOLDER")]
    pub training_folder: String,
    #[serde(rename = "DATASETS_FOLDER")]
    pub datasets_folder: String,
}

/// A job's status (`ui/prisma/schema.prisma`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Stopped,
    Queued,
    Running,
    Stopping,
    Completed,
    Error,
    Other(String),
}

impl JobStatus {
    pub fn parse(text: &str) -> Self {
        match text {
            "stopped" => Self::Stopped,
            "queued" => Self::Queued,
            "running" => Self::Running,
            "stopping" => Self::Stopping,
            "completed" => Self::Completed,
            "error" => Self::Error,
            other => Self::Other(other.to_owned()),
        }
    }

    /// ai-toolkit treats these as active (a stop is needed to end them).
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Queued | Self::Running | Self::Stopping)
    }
}

impl<'de> Deserialize<'de> for JobStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// A Job row. `job_config` is a JSON string in the row.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub gpu_ids: String,
    #[serde(default)]
    pub job_config: Option<String>,
    pub status: JobStatus,
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub step: Option<u64>,
    #[serde(default)]
    pub total_steps: Option<u64>,
    #[serde(default)]
    pub info: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

impl Job {
    /// `job_config`, parsed.
    pub fn config(&self) -> Option<Value> {
        serde_json::from_str(self.job_config.as_deref()?).ok()
    }

    /// `total_steps`, else the config's `train.steps` (ai-toolkit's progress rule).
    pub fn total(&self) -> Option<u64> {
        self.total_steps.or_else(|| {
            self.config()?
                .pointer("/config/process/0/train/steps")?
                .as_u64()
        })
    }
}

/// A GPU queue row.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Queue {
    pub gpu_ids: String,
    pub is_running: bool,
}

/// `GET /api/jobs/{id}/log`.
#[derive(Debug, Clone, Deserialize)]
pub struct Log {
    pub log: String,
    pub offset: u64,
    #[serde(default)]
    pub reset: bool,
}

/// One output of `GET /api/jobs/{id}/files`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct OutputFile {
    pub path: String,
    pub size: u64,
}

impl OutputFile {
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

#[derive(Clone)]
pub struct AiToolkitClient {
    http: reqwest::Client,
    settings: ClientSettings,
}

impl std::fmt::Debug for AiToolkitClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiToolkitClient")
            .field("settings", &self.settings)
            .finish()
    }
}

/// A request body.
enum Body {
    None,
    Json(Value),
    Files {
        dataset: String,
        files: Vec<(String, Vec<u8>)>,
    },
}

impl AiToolkitClient {
    pub fn new(settings: ClientSettings) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| AiToolkitError::Transport(e.to_string()))?;
        Ok(Self { http, settings })
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.settings.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| AiToolkitError::Decode("the base URL cannot have a path".to_owned()))?
            .pop_if_empty()
            .push("api")
            .extend(segments);
        Ok(url)
    }

    fn request(&self, method: Method, url: Url, timeout: Duration) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url).timeout(timeout);
        match &self.settings.token {
            Some(t) => r.bearer_auth(t.expose_secret()),
            None => r,
        }
    }

    /// One call with retries; the body of a 2xx answer.
    async fn call(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Body,
    ) -> Result<Vec<u8>> {
        let mut attempt = 0u32;
        loop {
            let mut r = self.request(method.clone(), url.clone(), self.settings.timeout);
            r = match &body {
                Body::None => r,
                Body::Json(v) => r.json(v),
                Body::Files { dataset, files } => {
                    let mut form = reqwest::multipart::Form::new();
                    for (name, bytes) in files {
                        form = form.part(
                            "files",
                            reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone()),
                        );
                    }
                    r.multipart(form.text("datasetName", dataset.clone()))
                }
            };
            let error = match self.once(r).await {
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            if !error.is_retryable() || attempt >= self.settings.max_retries {
                return Err(error);
            }
            let wait = self
                .settings
                .retry_delay
                .saturating_mul(2_u32.saturating_pow(attempt));
            tracing::debug!(op, attempt, wait_ms = wait.as_millis() as u64, %error, "retrying ai-toolkit call");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn once(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>> {
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?;
        status_error(status, &body)?;
        Ok(body.to_vec())
    }

    async fn get<T: DeserializeOwned>(&self, op: &'static str, segments: &[&str]) -> Result<T> {
        let body = self
            .call(op, Method::GET, self.url(segments)?, Body::None)
            .await?;
        decode(&body)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        op: &'static str,
        segments: &[&str],
        body: Value,
    ) -> Result<T> {
        let body = self
            .call(op, Method::POST, self.url(segments)?, Body::Json(body))
            .await?;
        decode(&body)
    }

    /// `GET /api/auth`: whether the token is accepted.
    pub async fn check_auth(&self) -> Result<()> {
        let _: Value = self.get("auth", &["auth"]).await?;
        Ok(())
    }

    pub async fn toolkit_settings(&self) -> Result<ToolkitSettings> {
        self.get("settings", &["settings"]).await
    }

    /// Creates a dataset; returns its name as ai-toolkit stored it (sanitized).
    pub async fn create_dataset(&self, name: &str) -> Result<String> {
        let v: Value = self
            .post(
                "dataset create",
                &["datasets", "create"],
                json!({ "name": name }),
            )
            .await?;
        v.get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| AiToolkitError::Decode("dataset create answered no name".to_owned()))
    }

    pub async fn list_datasets(&self) -> Result<Vec<String>> {
        self.get("dataset list", &["datasets", "list"]).await
    }

    /// Uploads `files` (name, bytes) into `dataset` in one multipart request; returns the stored
    /// (sanitized) names.
    pub async fn upload(
        &self,
        dataset: &str,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Uploaded {
            files: Vec<String>,
        }
        let body = Body::Files {
            dataset: dataset.to_owned(),
            files,
        };
        let answer = self
            .call(
                "dataset upload",
                Method::POST,
                self.url(&["datasets", "upload"])?,
                body,
            )
            .await?;
        Ok(decode::<Uploaded>(&answer)?.files)
    }

    pub async fn delete_dataset(&self, name: &str) -> Result<()> {
        let _: Value = self
            .post(
                "dataset delete",
                &["datasets", "delete"],
                json!({ "name": name }),
            )
            .await?;
        Ok(())
    }

    /// `POST /api/jobs` (a new training job, status `stopped`). 409 [`AiToolkitError::Conflict`]
    /// when the name exists.
    pub async fn create_job(&self, name: &str, gpu_ids: &str, config: &Value) -> Result<Job> {
        let body =
            json!({"name": name, "gpu_ids": gpu_ids, "job_config": config, "job_type": "train"});
        self.post("job create", &["jobs"], body).await
    }

    pub async fn jobs(&self) -> Result<Vec<Job>> {
        #[derive(Deserialize)]
        struct Jobs {
            jobs: Vec<Job>,
        }
        Ok(self.get::<Jobs>("job list", &["jobs"]).await?.jobs)
    }

    /// The job with `id`, `None` when ai-toolkit does not know it.
    pub async fn job(&self, id: &str) -> Result<Option<Job>> {
        let mut url = self.url(&["jobs"])?;
        url.query_pairs_mut().append_pair("id", id);
        match self.call("job get", Method::GET, url, Body::None).await {
            Ok(body) => decode(&body),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The job named `name`, if any.
    pub async fn job_by_name(&self, name: &str) -> Result<Option<Job>> {
        Ok(self.jobs().await?.into_iter().find(|j| j.name == name))
    }

    /// Queues the job. ai-toolkit answers the row **as it was before** the update: never read
    /// the new status from it.
    pub async fn start_job(&self, id: &str) -> Result<Job> {
        self.get("job start", &["jobs", id, "start"]).await
    }

    /// Asks the job to stop (returns the old row).
    pub async fn stop_job(&self, id: &str) -> Result<Job> {
        self.get("job stop", &["jobs", id, "stop"]).await
    }

    /// Deletes the job and its output folder.
    pub async fn delete_job(&self, id: &str) -> Result<()> {
        let _: Value = self.get("job delete", &["jobs", id, "delete"]).await?;
        Ok(())
    }

    /// `log.txt` from `offset` (the first call, with 0, gets at most the last 5 MB).
    pub async fn log(&self, id: &str, offset: u64) -> Result<Log> {
        let mut url = self.url(&["jobs", id, "log"])?;
        url.query_pairs_mut()
            .append_pair("offset", &offset.to_string());
        let body = self.call("job log", Method::GET, url, Body::None).await?;
        decode(&body)
    }

    /// The job's outputs: `*.safetensors` (step saves and the final file) and `optimizer.pt`.
    pub async fn files(&self, id: &str) -> Result<Vec<OutputFile>> {
        #[derive(Deserialize)]
        struct Files {
            files: Vec<OutputFile>,
        }
        Ok(self
            .get::<Files>("job files", &["jobs", id, "files"])
            .await?
            .files)
    }

    /// The job's sample images (absolute paths), oldest first.
    pub async fn samples(&self, id: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Samples {
            samples: Vec<String>,
        }
        Ok(self
            .get::<Samples>("job samples", &["jobs", id, "samples"])
            .await?
            .samples)
    }

    /// Starts the GPU queue `gpu_ids`: a queued job runs only once its queue is running.
    pub async fn start_queue(&self, gpu_ids: &str) -> Result<Queue> {
        self.get("queue start", &["queue", gpu_ids, "start"]).await
    }

    pub async fn queues(&self) -> Result<Vec<Queue>> {
        #[derive(Deserialize)]
        struct Queues {
            queues: Vec<Queue>,
        }
        Ok(self.get::<Queues>("queue list", &["queue"]).await?.queues)
    }

    /// Streams the file at the absolute server path `path` (`/api/files/…`) into `dest`, refusing
    /// more than `max_bytes`; returns its size. A partial file is removed.
    pub async fn download(&self, path: &str, dest: &Path, max_bytes: u64) -> Result<u64> {
        let url = self.url(&["files", path])?;
        let mut attempt = 0u32;
        loop {
            let result = self.download_once(url.clone(), dest, max_bytes).await;
            let error = match result {
                Ok(n) => return Ok(n),
                Err(e) => e,
            };
            let _ = tokio::fs::remove_file(dest).await;
            if !error.is_retryable() || attempt >= self.settings.max_retries {
                return Err(error);
            }
            tokio::time::sleep(
                self.settings
                    .retry_delay
                    .saturating_mul(2_u32.saturating_pow(attempt)),
            )
            .await;
            attempt += 1;
        }
    }

    async fn download_once(&self, url: Url, dest: &Path, max_bytes: u64) -> Result<u64> {
        let response = self
            .request(Method::GET, url, self.settings.download_timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response.bytes().await.map_err(transport)?;
            status_error(status, &body)?;
            return Err(AiToolkitError::Decode(format!("unexpected HTTP {status}")));
        }
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Err(AiToolkitError::TooLarge { limit: max_bytes });
        }
        let io = |e: std::io::Error| AiToolkitError::Io(e.to_string());
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut stream = response.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(transport)?;
            total = total.saturating_add(chunk.len() as u64);
            if total > max_bytes {
                return Err(AiToolkitError::TooLarge { limit: max_bytes });
            }
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(total)
    }
}

/// The error a non-2xx status means.
fn status_error(status: u16, body: &[u8]) -> Result<()> {
    match status {
        200..=299 => Ok(()),
        401 => Err(AiToolkitError::Unauthorized),
        404 => Err(AiToolkitError::NotFound(error_message(body))),
        409 => Err(AiToolkitError::Conflict(error_message(body))),
        s if s >= 500 => Err(AiToolkitError::Server {
            status: s,
            message: error_message(body),
        }),
        s => Err(AiToolkitError::Refused {
            status: s,
            message: error_message(body),
        }),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| AiToolkitError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_encode_the_whole_path_as_one_segment() {
        let c = AiToolkitClient::new(ClientSettings::new(
            Url::parse("http://127.0.0.1:8675/").unwrap(),
            None,
        ))
        .unwrap();
        let url = c.url(&["files", "/data/out/lora 1/x.safetensors"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8675/api/files/%2Fdata%2Fout%2Flora%201%2Fx.safetensors"
        );
    }

    #[test]
    fn progress_falls_back_to_the_configs_steps() {
        let job: Job = serde_json::from_value(json!({
            "id": "a", "name": "n", "gpu_ids": "0", "status": "running", "step": 3,
            "total_steps": null,
            "job_config": "{\"config\":{\"process\":[{\"train\":{\"steps\":40}}]}}"
        }))
        .unwrap();
        assert_eq!(job.total(), Some(40));
        assert_eq!(job.status, JobStatus::Running);
        assert!(job.status.is_active());
        assert_eq!(JobStatus::parse("weird"), JobStatus::Other("weird".into()));
    }

    #[test]
    fn debug_redacts_the_token() {
        let s = ClientSettings::new(
            Url::parse("http://h/").unwrap(),
            Some(SecretString::from("sekrit")),
        );
        assert!(!format!("{s:?}").contains("sekrit"));
    }
}
