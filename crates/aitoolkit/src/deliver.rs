//! Bringing a completed ai-toolkit job home: download its final LoRA (kohya form) and samples,
//! convert the LoRA to our diffusers form, and deliver both like a worker's result
//! (`RemoteAttempt::deliver`: uploads to the job's signed links, then `POST …/result`). Runs in
//! a task of its own, one per job, so an observe never waits for it and nothing is done twice.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use loraforge_checks::{UnetLayout, kohya_to_diffusers};
use loraforge_worker::remote::{RemoteAttempt, RemoteError};

use crate::config::SAMPLES;
use crate::{AiToolkitClient, Job};

/// Deliveries are repeated after a transient failure, waiting this long, then twice, four times.
const RETRY_DELAY: Duration = Duration::from_secs(2);
const DELIVER_TRIES: u32 = 4;

/// Where a delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Running,
    Delivered,
    /// It cannot be delivered: the run's outcome (a `domain::outcome` code) and why.
    Failed {
        code: &'static str,
        reason: String,
    },
}

/// A delivery task's state, shared with the backend.
#[derive(Debug)]
pub struct DeliverySlot {
    state: Arc<Mutex<Delivery>>,
    task: tokio::task::AbortHandle,
}

impl DeliverySlot {
    pub fn state(&self) -> Delivery {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Everything a delivery needs.
#[derive(Debug)]
pub struct DeliverJob {
    pub client: AiToolkitClient,
    pub remote: RemoteAttempt,
    pub job: Job,
    /// Scratch folder (the worker's layout goes under it; removed at the end).
    pub dir: PathBuf,
    pub max_model_bytes: u64,
    pub max_sample_bytes: u64,
    pub unet: UnetLayout,
}

pub fn spawn(job: DeliverJob) -> DeliverySlot {
    let state = Arc::new(Mutex::new(Delivery::Running));
    let shared = Arc::clone(&state);
    let task = tokio::spawn(async move {
        let dir = job.dir.clone();
        let end = match run(&job).await {
            Ok(()) => Delivery::Delivered,
            Err((code, reason)) => {
                tracing::warn!(job = %job.job.id, code, %reason, "delivering an ai-toolkit result failed");
                Delivery::Failed { code, reason }
            }
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        *shared.lock().unwrap_or_else(|e| e.into_inner()) = end;
    });
    DeliverySlot {
        state,
        task: task.abort_handle(),
    }
}

type Failure = (&'static str, String);

async fn run(d: &DeliverJob) -> Result<(), Failure> {
    let train = d.dir.join("train");
    let io = |e: std::io::Error| ("io_error", format!("scratch folder: {e}"));
    tokio::fs::create_dir_all(train.join("validation"))
        .await
        .map_err(io)?;
    let files = d
        .client
        .files(&d.job.id)
        .await
        .map_err(|e| ("upload_failed", format!("listing the job's outputs: {e}")))?;
    let wanted = format!("{}.safetensors", d.job.name);
    let Some(final_file) = files.iter().find(|f| f.file_name() == wanted) else {
        return Err((
            "missing_output",
            format!("ai-toolkit completed the job but lists no {wanted}"),
        ));
    };
    let kohya = train.join("model.kohya.safetensors");
    d.client
        .download(&final_file.path, &kohya, d.max_model_bytes)
        .await
        .map_err(|e| ("upload_failed", format!("downloading {wanted}: {e}")))?;
    let bytes = tokio::fs::read(&kohya).await.map_err(io)?;
    let unet = d.unet;
    let converted = tokio::task::spawn_blocking(move || kohya_to_diffusers(&bytes, unet))
        .await
        .map_err(|e| ("internal", format!("converting the LoRA: {e}")))?
        .map_err(|e| {
            (
                "missing_output",
                format!("ai-toolkit's LoRA cannot be converted: {e}"),
            )
        })?;
    tokio::fs::write(train.join("model.safetensors"), converted)
        .await
        .map_err(io)?;
    let images = samples(d, &train.join("validation")).await;
    let events = events(d, &images);
    let seconds = trainer_seconds(&d.job);
    let mut tries = 0;
    loop {
        match d.remote.deliver(&d.dir, &events, seconds).await {
            Ok(()) => return Ok(()),
            Err(RemoteError::NotActive) => {
                return Err((
                    "job_not_active",
                    "the job no longer wants this attempt".to_owned(),
                ));
            }
            Err(e) if e.is_retryable() && tries + 1 < DELIVER_TRIES => {
                tracing::info!(job = %d.job.id, error = %e, "delivering again");
                tokio::time::sleep(RETRY_DELAY.saturating_mul(2_u32.pow(tries))).await;
                tries += 1;
            }
            Err(e) => return Err(("upload_failed", e.to_string())),
        }
    }
}

/// The newest samples (the end of training) as `validation/{i}.png`; returns the paths written.
/// A sample that is not a PNG is re-encoded; one that fails is left out (validation then says
/// how many are missing).
async fn samples(d: &DeliverJob, dir: &Path) -> Vec<PathBuf> {
    let listed = match d.client.samples(&d.job.id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(job = %d.job.id, error = %e, "listing ai-toolkit samples failed");
            return Vec::new();
        }
    };
    let newest = &listed[listed.len().saturating_sub(SAMPLES)..];
    let mut written = Vec::new();
    for (i, path) in newest.iter().enumerate() {
        let to = dir.join(format!("{i}.png"));
        let got = d.client.download(path, &to, d.max_sample_bytes).await;
        if let Err(e) = got {
            tracing::warn!(job = %d.job.id, error = %e, "downloading an ai-toolkit sample failed");
            continue;
        }
        match to_png(&to).await {
            Ok(()) => written.push(to),
            Err(e) => {
                tracing::warn!(job = %d.job.id, error = %e, "an ai-toolkit sample is not an image")
            }
        }
    }
    written
}

/// Re-encodes `path` as PNG in place unless it is one.
async fn to_png(path: &Path) -> Result<(), String> {
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(());
    }
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let img = image::load_from_memory(&bytes).map_err(|e| e.to_string())?;
        img.save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The trainer's lines the delivery reads (`validation`, `done`), from what ai-toolkit says.
fn events(d: &DeliverJob, images: &[PathBuf]) -> String {
    let config = d.job.config().unwrap_or(Value::Null);
    let sample = config
        .pointer("/config/process/0/sample")
        .cloned()
        .unwrap_or(Value::Null);
    let seed = sample.get("seed").and_then(Value::as_u64).unwrap_or(0);
    let prompts: Vec<Value> = sample
        .get("samples")
        .and_then(Value::as_array)
        .map(|s| s.iter().filter_map(|p| p.get("prompt").cloned()).collect())
        .unwrap_or_default();
    let paths: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let seeds: Vec<u64> = (0..paths.len() as u64)
        .map(|i| seed.saturating_add(i))
        .collect();
    let validation = json!({"event": "validation", "images": paths, "prompts": prompts, "seeds": seeds, "scores": null, "scorer": null});
    let done = json!({
        "event": "done",
        "steps": d.job.total().or(d.job.step),
        "final_loss": null,
        "train_seconds": trainer_seconds(&d.job),
        "trainer": "ai-toolkit",
        "validation": {"images": images.len(), "scores": null},
    });
    format!("{validation}\n{done}\n")
}

/// From the row's creation to its last update (the completion), in seconds; 0 when unknown.
fn trainer_seconds(job: &Job) -> f64 {
    let parse = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (parse(&job.created_at), parse(&job.updated_at)) {
        (Some(a), Some(b)) if b >= a => (b - a).num_milliseconds() as f64 / 1000.0,
        _ => 0.0,
    }
}
