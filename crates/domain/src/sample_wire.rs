//! The worker protocol's sample routes (`docs/worker-protocol.md`, "Sample batches"): one
//! definition of each body, used by the server that answers and the worker that asks.

use serde::{Deserialize, Serialize};

use crate::samples::{GUIDANCE_SCALE, SampleSpec};

/// One image as the trainer's `sample` command takes it (`trainer/loraforge_trainer/sample.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SampleTrainerImage {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub scale: f64,
    pub steps: u32,
    pub width: u32,
    pub height: u32,
    pub guidance_scale: f64,
}

impl SampleTrainerImage {
    /// The trainer's images for a batch's spec, in order.
    pub fn of(spec: &SampleSpec) -> Vec<Self> {
        spec.prompts
            .iter()
            .map(|p| SampleTrainerImage {
                prompt: p.prompt.clone(),
                negative_prompt: p.negative_prompt.clone(),
                seed: p.seed,
                scale: p.scale,
                steps: spec.steps,
                width: spec.width,
                height: spec.height,
                guidance_scale: GUIDANCE_SCALE,
            })
            .collect()
    }
}

/// A signed PUT for one image.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SampleUpload {
    pub index: u32,
    pub key: String,
    pub url: String,
}

/// `GET /api/v1/worker/samples/{id}`: what the attempt renders.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SampleJob {
    pub batch_id: String,
    pub lora_id: String,
    pub attempt: u32,
    /// The base model, as the LoRA was trained on it (the trainer spec's `base_model`).
    pub base_model: String,
    /// A signed GET of the LoRA's diffusers file.
    pub lora_url: String,
    /// Its size in bytes, when known.
    pub lora_bytes: Option<u64>,
    pub images: Vec<SampleTrainerImage>,
    /// One per image, in order.
    pub uploads: Vec<SampleUpload>,
    /// Seconds between the worker's heartbeats while it renders and uploads
    /// (`POST …/heartbeat`); the engine fails an attempt not heard of within its lease.
    #[serde(default = "default_heartbeat_interval_s")]
    pub heartbeat_interval_s: f64,
}

/// What a worker assumes when a control plane sends no interval (one older than heartbeats).
fn default_heartbeat_interval_s() -> f64 {
    10.0
}

/// `POST /api/v1/worker/samples/{id}/heartbeat`: the attempt's worker is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SampleHeartbeat {
    pub attempt: u32,
}

/// One stored image of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SampleStored {
    pub index: u32,
    pub key: String,
    pub bytes: u64,
}

/// `POST /api/v1/worker/samples/{id}/result`: every image was uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SampleResult {
    pub attempt: u32,
    pub images: Vec<SampleStored>,
}

/// `POST /api/v1/worker/samples/{id}/failure`: the attempt ended without images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SampleFailure {
    pub attempt: u32,
    /// An outcome code (`domain::outcome`).
    pub code: String,
    pub reason: Option<String>,
}

/// The answer to a result or failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SampleReportAnswer {
    /// False when this attempt's report was already in (or the batch moved on).
    pub recorded: bool,
    /// The batch's status afterwards.
    pub status: String,
}
