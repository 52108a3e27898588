//! The worker's part, played by the control plane for a provider that runs our trainer but not
//! our worker (Replicate runs it as a Cog model, ai-toolkit runs its own trainer). Such a backend
//! holds the attempt's credentials (`engine::Launch`: the server's URL, the LoRA and the
//! per-attempt token) and speaks the same worker protocol (`docs/worker-protocol.md`) a worker
//! would: it fetches the job, relays progress (which keeps the job's lease), and, when the
//! provider is done, uploads the outputs to the job's links and posts the result or the failure.
//! So a provider's run is settled exactly like a worker's, by the same routes and the same engine.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use crate::api::{self, CallError, ControlPlane, Failed, retrying};
use crate::files;
use crate::job::{FailureBody, ImageRef, Job, Kept, ProgressBody};
use crate::layout::Layout;
use crate::trainer::Line;

/// The first pause between retries of a call to the control plane (it doubles, 3 retries).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Why a call for a remote attempt failed. Holds no URL (they carry signatures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteError {
    /// It may pass: no answer, a 5xx or 429 after the retries, an upload that broke off.
    Transient(String),
    /// It cannot succeed as it is: a refused token, a malformed job, outputs that are missing.
    Permanent(String),
    /// The job no longer wants this attempt (cancelled, failed, requeued or taken over).
    NotActive,
}

impl RemoteError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RemoteError::Transient(_))
    }

    fn from_call(what: &str, e: &CallError) -> Self {
        if e.status() == Some(StatusCode::CONFLICT) {
            return RemoteError::NotActive;
        }
        if e.is_retryable() {
            RemoteError::Transient(format!("{what}: {e}"))
        } else {
            RemoteError::Permanent(format!("{what}: {e}"))
        }
    }

    fn from_failed(what: &str, f: &Failed) -> Self {
        match Self::from_call(what, &f.error) {
            RemoteError::Transient(m) => RemoteError::Transient(format!("{m} ({} tries)", f.tries)),
            other => other,
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Transient(m) | RemoteError::Permanent(m) => f.write_str(m),
            RemoteError::NotActive => f.write_str("the job no longer wants this attempt"),
        }
    }
}

impl std::error::Error for RemoteError {}

/// The job, as a backend that runs it elsewhere needs it. Holds signed URLs: no `Debug`.
pub struct RemoteJob {
    pub attempt: u64,
    /// As the worker gets it (`docs/worker-protocol.md`), to hand to the trainer.
    pub trainer_spec: serde_json::Value,
    pub images: Vec<RemoteImage>,
    /// How often the job's lease wants a word.
    pub heartbeat_interval: Duration,
    /// A signed GET link to a zip of the images and their captions (`NN.png` + `NN.txt`), when
    /// the control plane offers one.
    pub dataset_zip: Option<String>,
}

/// One image of the job: its safe file name, a signed GET link, its size and caption (which
/// already holds the trigger word).
pub struct RemoteImage {
    pub file_name: String,
    pub url: String,
    pub bytes: u64,
    pub caption: Option<String>,
}

/// Progress of a run elsewhere; every field optional (none: a heartbeat).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteProgress {
    pub stage: Option<String>,
    pub step: Option<u64>,
    pub total: Option<u64>,
    pub loss: Option<f64>,
    pub eta_s: Option<f64>,
}

/// What a provider's copy of the trainer's stdout says (`trainer/README.md`): read with the
/// worker's own reading of those lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainerLog {
    /// The newest stage and step, for [`RemoteAttempt::progress`].
    pub progress: RemoteProgress,
    /// The last `{"event":"error",…}` line, verbatim.
    pub last_error: Option<String>,
    /// Its `code`, when it has one the outcome table knows.
    pub error_code: Option<String>,
    /// Its `reason`.
    pub error_reason: Option<String>,
    pub done: Option<serde_json::Value>,
    pub validation: Option<serde_json::Value>,
}

impl TrainerLog {
    /// Reads the trainer's JSON lines in `text` (other lines, such as a provider's own log
    /// lines, are skipped).
    pub fn read(text: &str) -> Self {
        let mut log = TrainerLog::default();
        for line in text.lines() {
            match Line::parse(line) {
                Some(Line::Stage(stage)) => log.progress.stage = Some(stage),
                Some(Line::Progress(step)) => {
                    log.progress.step = Some(step.step);
                    log.progress.total = Some(step.total);
                    log.progress.loss = step.loss;
                    log.progress.eta_s = step.eta_s;
                }
                Some(Line::Error(line)) => log.last_error = Some(line),
                Some(Line::Done(v)) => log.done = Some(v),
                Some(Line::Validation(v)) => log.validation = Some(v),
                _ => {}
            }
        }
        if let Some(error) = log
            .last_error
            .as_deref()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let field = |k: &str| error.get(k)?.as_str().map(str::to_owned);
            log.error_code = field("code").filter(|c| loraforge_domain::outcome::spec(c).is_some());
            log.error_reason = field("reason");
        }
        log
    }
}

/// One attempt of a job, run by a provider, with the worker's credentials.
#[derive(Clone)]
pub struct RemoteAttempt {
    http: reqwest::Client,
    api: Arc<ControlPlane>,
}

impl fmt::Debug for RemoteAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteAttempt")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl RemoteAttempt {
    /// `server`: the control plane's base URL as a worker would reach it; `token`: the
    /// per-attempt worker token.
    pub fn new(server: &str, lora_id: &str, token: &str) -> Result<Self, RemoteError> {
        let server = url::Url::parse(server).map_err(|e| {
            RemoteError::Permanent(format!(
                "the control plane URL {server:?} is not a URL ({e})"
            ))
        })?;
        let http = api::client()
            .map_err(|e| RemoteError::Permanent(format!("cannot set up HTTP: {e}")))?;
        let api = ControlPlane::new(http.clone(), &server, lora_id, token.to_owned())
            .map_err(RemoteError::Permanent)?;
        Ok(Self {
            http,
            api: Arc::new(api),
        })
    }

    async fn fetch(&self) -> Result<Job, RemoteError> {
        retrying("fetching the job", RETRY_DELAY, || self.api.job())
            .await
            .map_err(|f| RemoteError::from_failed("fetching the job", &f))
    }

    /// The job (its links are fresh: each call signs them anew).
    pub async fn job(&self) -> Result<RemoteJob, RemoteError> {
        let job = self.fetch().await?;
        Ok(RemoteJob {
            attempt: job.attempt,
            trainer_spec: job.trainer_spec,
            images: job
                .images
                .into_iter()
                .map(|i| RemoteImage {
                    file_name: i.file_name,
                    url: i.url,
                    bytes: i.bytes,
                    caption: i.caption,
                })
                .collect(),
            heartbeat_interval: Duration::try_from_secs_f64(job.heartbeat_interval_s)
                .ok()
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(10)),
            dataset_zip: job.dataset_zip,
        })
    }

    /// Downloads the job's images into `dir` (created) with each caption in `<stem>.txt` beside
    /// it, as the worker lays them out for the trainer, each checked against its announced
    /// size. Returns the images' paths in the job's order.
    pub async fn download_images(
        &self,
        job: &RemoteJob,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, RemoteError> {
        let refs = job
            .images
            .iter()
            .map(|i| ImageRef {
                file_name: i.file_name.clone(),
                url: i.url.clone(),
                bytes: i.bytes,
                caption: i.caption.clone(),
            })
            .collect();
        let images = files::check_images(refs).map_err(RemoteError::Permanent)?;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| RemoteError::Transient(format!("cannot create {}: {e}", dir.display())))?;
        match files::download_images(&self.http, &images, dir, RETRY_DELAY).await {
            Ok(()) => Ok(images.iter().map(|i| dir.join(&i.file_name)).collect()),
            Err(files::DownloadError::Local(reason)) => Err(RemoteError::Transient(reason)),
            Err(files::DownloadError::Http { file_name, failed }) => Err(RemoteError::from_failed(
                &format!("downloading image {file_name}"),
                &failed,
            )),
        }
    }

    /// Progress, or a heartbeat when `p` is empty; either extends the job's lease.
    /// `Ok(false)`: the job no longer wants this attempt; stop the provider's run.
    pub async fn progress(&self, attempt: u64, p: &RemoteProgress) -> Result<bool, RemoteError> {
        let body = ProgressBody {
            attempt,
            stage: p.stage.clone(),
            step: p.step,
            total: p.total,
            loss: p.loss.filter(|l| l.is_finite()),
            eta_s: p.eta_s.filter(|e| e.is_finite()),
        };
        match self.api.progress(&body).await {
            Ok(()) => Ok(true),
            Err(e) => match RemoteError::from_call("posting progress", &e) {
                RemoteError::NotActive => Ok(false),
                other => Err(other),
            },
        }
    }

    /// The attempt failed. `code` is an outcome code (`loraforge_domain::outcome`); the first
    /// report of an attempt wins, so a failure after a cancel changes nothing.
    pub async fn fail(
        &self,
        attempt: u64,
        code: &str,
        reason: &str,
        retryable: bool,
    ) -> Result<(), RemoteError> {
        let body = FailureBody {
            attempt,
            code: code.to_owned(),
            reason: Some(reason.to_owned()),
            retryable,
        };
        match retrying("reporting the failure", RETRY_DELAY, || {
            self.api.failure(&body)
        })
        .await
        {
            Ok(()) => Ok(()),
            Err(f) => match RemoteError::from_failed("reporting the failure", &f) {
                // The job moved on: nothing to report to.
                RemoteError::NotActive => Ok(()),
                other => Err(other),
            },
        }
    }

    /// The attempt trained elsewhere. `out` holds the trainer's outputs in the worker's layout
    /// (`train/model.safetensors`, `train/model.kohya.safetensors`, optional
    /// `train/validation/{i}.png`); `events` is the trainer's stdout as the provider kept it
    /// (read by [`TrainerLog::read`]: its `done` line is required, its `validation` line used
    /// when there). Uploads the files to the
    /// job's links and posts the result, as a worker does with outputs it kept; `result.json`
    /// is written into `out` on the way (the worker's record of kept outputs).
    pub async fn deliver(
        &self,
        out: &Path,
        events: &str,
        trainer_seconds: f64,
    ) -> Result<(), RemoteError> {
        let log = TrainerLog::read(events);
        let layout = Layout::new(out);
        for path in [layout.model(), layout.kohya()] {
            if !path.is_file() {
                return Err(RemoteError::Permanent(format!(
                    "the provider's outputs lack {}",
                    path.strip_prefix(out).unwrap_or(&path).display()
                )));
            }
        }
        let Some(done) = log.done.clone() else {
            return Err(RemoteError::Permanent(
                "the provider's trainer log has no done line".to_owned(),
            ));
        };
        // Fresh links: the ones handed out at launch may have expired during training.
        let job = self.fetch().await?;
        let kept = Kept {
            attempt: job.attempt,
            trainer_seconds: if trainer_seconds.is_finite() && trainer_seconds >= 0.0 {
                trainer_seconds
            } else {
                0.0
            },
            done,
            validation: log.validation.clone(),
        };
        let json = serde_json::to_vec_pretty(&kept).expect("JSON values serialize");
        files::write_atomic(&layout.result, &json)
            .await
            .map_err(|e| RemoteError::Transient(format!("cannot write result.json: {e}")))?;
        let uploaded = crate::upload_all(&self.http, &job.uploads, &layout, RETRY_DELAY)
            .await
            .map_err(|exit| {
                let reason = exit
                    .failure_report()
                    .and_then(|(_, reason, _)| reason)
                    .unwrap_or_else(|| "uploading the outputs failed".to_owned());
                RemoteError::Transient(reason)
            })?;
        let body = crate::result_body(job.attempt, &kept, uploaded);
        match retrying("posting the result", RETRY_DELAY, || self.api.result(&body)).await {
            Ok(answer) => {
                tracing::info!(status = ?answer.status, error = ?answer.error, "remote result accepted");
                Ok(())
            }
            Err(f) => Err(RemoteError::from_failed("posting the result", &f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_log_is_read_as_the_worker_reads_the_trainer() {
        let text = concat!(
            "Running cog train\n",
            r#"{"event":"stage","stage":"training"}"#,
            "\n",
            r#"{"event":"progress","step":3,"total":10,"loss":0.5,"eta_s":2}"#,
            "\n",
            "some provider line\n",
            r#"{"event":"progress","step":7,"total":10,"loss":0.25,"eta_s":1}"#,
            "\n",
            r#"{"event":"validation","scores":[0.3,0.4,0.5]}"#,
            "\n",
            r#"{"event":"done","train_seconds":4.5}"#,
            "\n"
        );
        let log = TrainerLog::read(text);
        assert_eq!(log.progress.stage.as_deref(), Some("training"));
        assert_eq!(log.progress.step, Some(7));
        assert_eq!(log.progress.total, Some(10));
        assert_eq!(log.progress.loss, Some(0.25));
        assert_eq!(log.done.unwrap()["train_seconds"], 4.5);
        assert!(log.validation.is_some());
        assert_eq!(log.last_error, None);
    }

    #[test]
    fn an_error_line_gives_its_code_only_when_the_table_knows_it() {
        let log = TrainerLog::read(
            r#"{"event":"error","code":"non_finite_loss","reason":"loss is NaN at step 3"}"#,
        );
        assert_eq!(log.error_code.as_deref(), Some("non_finite_loss"));
        assert_eq!(log.error_reason.as_deref(), Some("loss is NaN at step 3"));
        let log = TrainerLog::read(r#"{"event":"error","code":"made_up","reason":"x"}"#);
        assert_eq!(log.error_code, None);
        assert!(log.last_error.is_some());
    }

    #[test]
    fn a_conflict_means_the_job_moved_on() {
        let e = CallError::Status {
            status: StatusCode::CONFLICT,
            code: Some("job_not_active".into()),
            message: None,
        };
        assert_eq!(RemoteError::from_call("x", &e), RemoteError::NotActive);
        let e = CallError::Status {
            status: StatusCode::BAD_GATEWAY,
            code: None,
            message: None,
        };
        assert!(RemoteError::from_call("x", &e).is_retryable());
        let e = CallError::Status {
            status: StatusCode::UNAUTHORIZED,
            code: None,
            message: None,
        };
        assert!(matches!(
            RemoteError::from_call("x", &e),
            RemoteError::Permanent(_)
        ));
    }
}
