//! Sample mode (`LORAFORGE_SAMPLE_BATCH` set): one attempt of one sample batch. Fetch the batch
//! (`GET /api/v1/worker/samples/{id}`), download the LoRA file from its signed link, run the
//! trainer's `sample` command (`trainer/loraforge_trainer/sample.py`), upload each PNG to its
//! signed PUT link, post the result; on any failure post it (`…/failure`) and print the error
//! line. From the fetch until the result a heartbeat goes out every `heartbeat_interval_s`
//! (`…/heartbeat`), so the engine sees a dead or cut-off worker within its lease; a heartbeat
//! answered 409 (the attempt is over: failed by the engine, or the batch moved on) stops the
//! sampler and ends the attempt. The scratch folder is emptied at the end either way (nothing
//! here is worth keeping: the next attempt renders again). The token and signed links are never
//! logged.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, BufReader};
use url::Url;

use loraforge_domain::sample_wire::{
    SampleFailure, SampleHeartbeat, SampleJob, SampleResult, SampleStored, SampleTrainerImage,
};

use crate::api::{self, CallError, Failed, retrying, success};
use crate::files::{download, put_file, remove_tree};
use crate::{Exit, TrainerCommand, exit};

/// A LoRA file larger than this is refused (an SDXL LoRA of rank 128 is ~700 MB).
const MAX_LORA_BYTES: u64 = 2 << 30;
/// Longest a render may take.
const RENDER_LIMIT: Duration = Duration::from_secs(30 * 60);

/// How to run one sample attempt.
#[derive(Clone)]
pub struct SampleConfig {
    pub server: Url,
    pub batch: String,
    /// The per-attempt sample token. Never logged.
    pub token: String,
    /// The attempt's scratch folder.
    pub out: PathBuf,
    pub trainer: TrainerCommand,
    pub retry_delay: Duration,
    /// Tests only: the sampler fails after loading (`debug_fail` in its spec).
    pub debug_fail: bool,
}

impl std::fmt::Debug for SampleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleConfig")
            .field("server", &self.server.as_str())
            .field("batch", &self.batch)
            .field("token", &"<redacted>")
            .field("out", &self.out)
            .finish_non_exhaustive()
    }
}

struct Api {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl Api {
    fn url(&self, last: Option<&str>) -> Url {
        let mut u = self.base.clone();
        if let (Some(l), Ok(mut s)) = (last, u.path_segments_mut()) {
            s.push(l);
        }
        u
    }

    async fn get<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        let resp = self
            .http
            .get(self.url(None))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(CallError::transport)?;
        let bytes = success(resp)
            .await?
            .bytes()
            .await
            .map_err(CallError::transport)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Invalid(format!("the sample job does not parse: {e}")))
    }

    async fn post(&self, route: &str, body: &impl Serialize) -> Result<(), CallError> {
        let resp = self
            .http
            .post(self.url(Some(route)))
            .bearer_auth(&self.token)
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(CallError::transport)?;
        success(resp).await.map(drop)
    }
}

/// Runs one sample attempt; the process exit code.
pub async fn run_sample(cfg: SampleConfig, mut stdout: impl std::io::Write + Send) -> i32 {
    let out = match std::path::absolute(&cfg.out) {
        Ok(o) => o,
        Err(e) => return finish(Exit::error("io_error", e.to_string()), &mut stdout),
    };
    let http = match api::client() {
        Ok(c) => c,
        Err(e) => return finish(Exit::error("internal", e.to_string()), &mut stdout),
    };
    let mut base = cfg.server.clone();
    base.set_query(None);
    base.set_fragment(None);
    if let Ok(mut s) = base.path_segments_mut() {
        s.pop_if_empty()
            .extend(["api", "v1", "worker", "samples", &cfg.batch]);
    }
    let api = Api {
        http,
        base,
        token: cfg.token.clone(),
    };
    let job: SampleJob =
        match retrying("fetching the sample batch", cfg.retry_delay, || api.get()).await {
            Ok(j) => j,
            Err(Failed { error, .. }) => {
                let exit = if error.status().is_some_and(|s| s.as_u16() == 409) {
                    Exit::error("job_not_active", error.message())
                } else {
                    Exit::error("control_plane_unreachable", error.message())
                };
                return finish(exit, &mut stdout);
            }
        };
    tracing::info!(batch = %cfg.batch, attempt = job.attempt, images = job.images.len(), "sample batch fetched");
    let interval = Duration::try_from_secs_f64(job.heartbeat_interval_s)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(10));
    // The heartbeats end before the result is posted, so none can meet the batch completed.
    let stored = tokio::select! {
        stored = render_and_store(&cfg, &api, &job, &out) => stored,
        over = heartbeats(&api, job.attempt, interval) => Err(over),
    };
    let exit = match stored {
        Ok(images) => report(&cfg, &api, job.attempt, images).await,
        Err(exit) => exit,
    };
    remove_tree(&out.join("images")).await;
    let _ = tokio::fs::remove_file(out.join("model.safetensors")).await;
    let _ = tokio::fs::remove_file(out.join("sample.json")).await;
    if let Some((code, reason, _)) = exit.failure_report() {
        let body = SampleFailure {
            attempt: job.attempt,
            code,
            reason,
        };
        if let Err(Failed { error, .. }) =
            retrying("reporting the failure", cfg.retry_delay, || {
                api.post("failure", &body)
            })
            .await
        {
            tracing::warn!(%error, "could not report the failure; the engine learns of it from the instance");
        }
    }
    finish(exit, &mut stdout)
}

fn finish(exit: Exit, stdout: &mut impl std::io::Write) -> i32 {
    if let Some(line) = &exit.line {
        tracing::warn!(exit = exit.code, "sample attempt failed: {line}");
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    }
    exit.code
}

/// Posts a heartbeat every `interval` for as long as it is polled; returns only when one is
/// answered 409 (the attempt is no longer the batch's). Other failures are logged and the beat
/// goes on: the engine's lease, not this worker, decides when silence is too long.
async fn heartbeats(api: &Api, attempt: u32, interval: Duration) -> Exit {
    let body = SampleHeartbeat { attempt };
    loop {
        tokio::time::sleep(interval).await;
        match api.post("heartbeat", &body).await {
            Ok(()) => tracing::debug!("heartbeat"),
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 409) => {
                tracing::warn!(error = %e.message(), "the attempt is over; stopping the sampler");
                return Exit::error("job_not_active", e.message());
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "a heartbeat failed; the next goes out as usual")
            }
        }
    }
}

/// Downloads the LoRA, renders and uploads every image: what the result reports, or how the
/// attempt ends. Dropped when a heartbeat learns the attempt is over (the sampler, spawned with
/// `kill_on_drop`, is killed with it).
async fn render_and_store(
    cfg: &SampleConfig,
    api: &Api,
    job: &SampleJob,
    out: &Path,
) -> Result<Vec<SampleStored>, Exit> {
    if job.uploads.len() != job.images.len() {
        return Err(Exit::error(
            "bad_job",
            "the batch has not one upload per image",
        ));
    }
    if let Err(e) = tokio::fs::create_dir_all(out.join("images")).await {
        return Err(Exit::error(
            "io_error",
            format!("cannot create {}: {e}", out.display()),
        ));
    }
    // 1. The LoRA file.
    let lora = out.join("model.safetensors");
    let Ok(url) = Url::parse(&job.lora_url) else {
        return Err(Exit::error("bad_job", "the LoRA link is not a URL"));
    };
    let bytes = job.lora_bytes.unwrap_or(MAX_LORA_BYTES).min(MAX_LORA_BYTES);
    if let Err(Failed { error, .. }) = retrying("downloading the LoRA", cfg.retry_delay, || {
        download_up_to(&api.http, &url, bytes, job.lora_bytes.is_some(), &lora)
    })
    .await
    {
        return Err(Exit::error(
            "control_plane_unreachable",
            format!("downloading the LoRA file: {}", error.message()),
        ));
    }
    // 2. Render.
    #[derive(Serialize)]
    struct Spec<'a> {
        base_model: &'a str,
        lora: String,
        images: &'a [SampleTrainerImage],
        debug_fail: bool,
    }
    let spec = Spec {
        base_model: &job.base_model,
        lora: lora.display().to_string(),
        images: &job.images,
        debug_fail: cfg.debug_fail,
    };
    let spec_path = out.join("sample.json");
    let json = serde_json::to_vec(&spec).unwrap_or_default();
    if let Err(e) = tokio::fs::write(&spec_path, json).await {
        return Err(Exit::error(
            "io_error",
            format!("cannot write the sample spec: {e}"),
        ));
    }
    if let Some(failed) = run_trainer(&cfg.trainer, &spec_path, &out.join("images")).await {
        return Err(failed);
    }
    // 3. Upload.
    let mut stored = Vec::with_capacity(job.uploads.len());
    for up in &job.uploads {
        let path = out.join("images").join(format!("{}.png", up.index));
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) if m.len() > 0 => m.len(),
            _ => {
                return Err(Exit::error(
                    "missing_output",
                    format!("the sampler wrote no image {}", up.index),
                ));
            }
        };
        let Ok(url) = Url::parse(&up.url) else {
            return Err(Exit::error("bad_job", "an upload link is not a URL"));
        };
        if let Err(Failed { error, .. }) =
            retrying(&format!("uploading {}", up.key), cfg.retry_delay, || {
                put_file(&api.http, &url, &path)
            })
            .await
        {
            return Err(Exit::error(
                "upload_failed",
                format!("uploading {}: {}", up.key, error.message()),
            ));
        }
        stored.push(SampleStored {
            index: up.index,
            key: up.key.clone(),
            bytes: size,
        });
    }
    Ok(stored)
}

/// Posts the result: every image is stored.
async fn report(cfg: &SampleConfig, api: &Api, attempt: u32, images: Vec<SampleStored>) -> Exit {
    let result = SampleResult { attempt, images };
    match retrying("reporting the result", cfg.retry_delay, || {
        api.post("result", &result)
    })
    .await
    {
        Ok(()) => {
            tracing::info!(
                images = result.images.len(),
                "sample batch rendered and stored"
            );
            Exit::ok()
        }
        Err(Failed { error, .. }) if error.status().is_some_and(|s| s.as_u16() == 409) => {
            Exit::error("job_not_active", error.message())
        }
        Err(Failed { error, .. }) => Exit::error("result_failed", error.message()),
    }
}

/// A download whose size is known exactly (`exact`) or only bounded.
async fn download_up_to(
    http: &reqwest::Client,
    url: &Url,
    bytes: u64,
    exact: bool,
    path: &Path,
) -> Result<(), CallError> {
    if exact {
        return download(http, url, bytes, path).await;
    }
    let resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(CallError::transport)?;
    let mut resp = success(resp).await?;
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(CallError::transport)? {
        if (buf.len() + chunk.len()) as u64 > bytes {
            return Err(CallError::Invalid(format!("more than {bytes} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    tokio::fs::write(path, buf)
        .await
        .map_err(|e| CallError::Invalid(format!("cannot write {}: {e}", path.display())))
}

/// Runs `trainer sample`; `None` when it succeeded, else how the attempt ends (its error line).
async fn run_trainer(t: &TrainerCommand, spec: &Path, out: &Path) -> Option<Exit> {
    let mut cmd = tokio::process::Command::new(&t.program);
    cmd.args(&t.args)
        .arg("sample")
        .arg("--spec")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .envs(t.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // The trainer never sees the token.
        .env_remove("LORAFORGE_WORKER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Some(Exit::error(
                "trainer_unavailable",
                format!("cannot run {}: {e}", t.program.display()),
            ));
        }
    };
    let Some(stdout) = child.stdout.take() else {
        return Some(Exit::error(
            "trainer_failed",
            "the sampler's stdout is not a pipe",
        ));
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut last_error: Option<String> = None;
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.len() > 64 * 1024 {
                continue;
            }
            let event = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_owned));
            match event.as_deref() {
                Some("error") => last_error = Some(line),
                Some("progress") => tracing::info!("sampling: {line}"),
                _ => {}
            }
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(RENDER_LIMIT, read).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Some(Exit::error("trainer_failed", e.to_string())),
        Err(_) => {
            return Some(Exit::error(
                "trainer_silent",
                "the sampler took longer than 30 min",
            ));
        }
    };
    if status.success() {
        return None;
    }
    let code = status.code().unwrap_or(exit::INTERNAL);
    Some(match last_error {
        Some(line) => Exit::verbatim(code, line),
        None => Exit::error(
            "trainer_failed",
            format!("the sampler exited with {status} without an error line"),
        ),
    })
}
