//! `/api/v1/worker/jobs/{id}`: the worker protocol (`docs/worker-protocol.md`). A worker holds a
//! per-attempt token ([`WorkerAuth`]); every call checks that its engine still holds the job's
//! lease for that attempt, and extends the lease (a call is a heartbeat). The result call runs
//! PRD 2's after-training steps on what the worker uploaded: the LoRA file check, `validating`,
//! and the quality rule.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use loraforge_db::{EventDetail, TrainedFiles};
use loraforge_domain::validation::{VALIDATION_IMAGES, Verdict, judge};
use loraforge_domain::{LoraModel, Progress, StatusEvent, TrainingStatus, UserId, caption_for_training};

use crate::auth::WorkerAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::lora_models::load;
use crate::state::AppState;

/// Where a LoRA's trained files go in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputKeys {
    pub model: String,
    pub kohya: String,
    pub validation: Vec<String>,
}

impl OutputKeys {
    pub fn of(user: UserId, lora: &LoraModel) -> Self {
        let id = lora.id;
        Self {
            model: format!("lora-models/{user}/{id}/model.safetensors"),
            kohya: format!("lora-models/{user}/{id}/model.kohya.safetensors"),
            validation: (0..VALIDATION_IMAGES)
                .map(|i| format!("lora-validation-images/{user}/{id}/validation/{i}.png"))
                .collect(),
        }
    }
}

/// `GET /api/v1/worker/jobs/{id}`.
#[derive(Debug, Serialize)]
pub struct WorkerJob {
    pub lora_id: String,
    pub attempt: u32,
    /// Handed to the trainer as its `--spec` (trainer/README.md).
    pub trainer_spec: Value,
    pub images: Vec<JobImage>,
    pub uploads: Uploads,
    pub heartbeat_interval_s: u64,
    pub progress_interval_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct JobImage {
    /// `NN.ext`: safe to use as a file name as is.
    pub file_name: String,
    pub url: String,
    pub bytes: u64,
    /// Already holds the trigger word.
    pub caption: String,
}

#[derive(Debug, Serialize)]
pub struct Uploads {
    pub model: UploadTarget,
    pub kohya: UploadTarget,
    pub validation: Vec<UploadTarget>,
}

#[derive(Debug, Serialize)]
pub struct UploadTarget {
    pub key: String,
    pub url: String,
}

/// `POST …/progress`: everything but `attempt` optional; only `attempt` is a heartbeat.
#[derive(Debug, Deserialize)]
pub struct ProgressBody {
    pub attempt: u32,
    pub stage: Option<String>,
    pub step: Option<u64>,
    pub total: Option<u64>,
    pub loss: Option<f64>,
    pub eta_s: Option<f64>,
}

/// `POST …/result`.
#[derive(Debug, Deserialize)]
pub struct ResultBody {
    pub attempt: u32,
    pub train_seconds: Option<f64>,
    pub trainer_seconds: Option<f64>,
    pub model: FileFacts,
    pub kohya: Option<FileFacts>,
    pub validation: ValidationFacts,
}

#[derive(Debug, Deserialize)]
pub struct FileFacts {
    pub bytes: u64,
    pub sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ValidationFacts {
    pub images: usize,
    pub scores: Option<Vec<f64>>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ResultAnswer {
    pub status: TrainingStatus,
    pub error: Option<String>,
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b).map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))
}

fn not_active(lora: &LoraModel, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "job_not_active",
        format!("this attempt no longer holds the job ({why}; the LoRA is {}); stop working on it", lora.status),
    )
    .with("training_status", lora.status.as_str())
}

/// The LoRA named by the path, if the token is for it.
async fn own_lora(state: &AppState, auth: &WorkerAuth, id: &str) -> ApiResult<LoraModel> {
    if id.parse().ok() != Some(auth.lora_id) {
        return Err(ApiError::forbidden("this job token is for another LoRA"));
    }
    load(state, id).await
}

/// Checks the token's attempt still holds the job and extends its lease.
async fn hold(state: &AppState, auth: &WorkerAuth, lora: &LoraModel) -> ApiResult<()> {
    if lora.status != TrainingStatus::Training {
        return Err(not_active(lora, "it is not training"));
    }
    let claim = state.repo().job_claim(lora.id).await?.ok_or_else(|| ApiError::not_found("job"))?;
    if claim.worker.as_deref() != Some(auth.worker_id.as_str()) || claim.attempt != auth.attempt {
        return Err(not_active(lora, "another attempt holds it"));
    }
    let now = state.now();
    let lease = now + chrono::Duration::from_std(state.settings().worker.lease).unwrap_or(chrono::Duration::minutes(2));
    if !state.repo().heartbeat(lora.id, &auth.worker_id, lease, now).await? {
        return Err(not_active(lora, "its lease was taken"));
    }
    Ok(())
}

fn check_attempt(auth: &WorkerAuth, attempt: u32) -> ApiResult<()> {
    if attempt != auth.attempt {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("`attempt` is {attempt} but the token is for attempt {}", auth.attempt),
        ));
    }
    Ok(())
}

/// The job of the token's attempt: the trainer's spec, signed image links, signed upload links.
pub async fn job(State(state): State<AppState>, auth: WorkerAuth, Path(id): Path<String>) -> ApiResult<Json<WorkerJob>> {
    let lora = own_lora(&state, &auth, &id).await?;
    hold(&state, &auth, &lora).await?;
    let dataset = state
        .repo()
        .get_dataset(lora.dataset_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "dataset_gone", "the LoRA's dataset no longer exists"))?;
    let settings = state.settings();
    let (now, ttl) = (state.now(), settings.worker.url_ttl);
    let mut images = Vec::with_capacity(dataset.images.len());
    for (i, img) in dataset.images.iter().enumerate() {
        images.push(JobImage {
            file_name: format!("{i:02}.{}", img.format.extension()),
            url: state.store().signed_get_url(&img.storage_key, ttl, now).await?.to_string(),
            bytes: img.bytes,
            caption: caption_for_training(img.caption.as_deref(), &lora.params.trigger_words, &lora.name),
        });
    }
    let keys = OutputKeys::of(lora.creator.id, &lora);
    let target = async |key: &String| -> ApiResult<UploadTarget> {
        Ok(UploadTarget { key: key.clone(), url: state.store().signed_put_url(key, ttl, now).await?.to_string() })
    };
    let mut validation = Vec::new();
    for key in &keys.validation {
        validation.push(target(key).await?);
    }
    let uploads = Uploads { model: target(&keys.model).await?, kohya: target(&keys.kohya).await?, validation };
    let mut spec = serde_json::to_value(&lora.params).map_err(|e| ApiError::internal("trainer spec", &e))?;
    if let Some(obj) = spec.as_object_mut() {
        obj.insert("job_id".into(), json!(lora.id.to_string()));
        obj.insert("validation".into(), json!({ "enabled": true, "scorer": settings.validation.scorer }));
    }
    Ok(Json(WorkerJob {
        lora_id: lora.id.to_string(),
        attempt: auth.attempt,
        trainer_spec: spec,
        images,
        uploads,
        heartbeat_interval_s: settings.worker.heartbeat_interval.as_secs().max(1),
        progress_interval_ms: u64::try_from(settings.worker.progress_interval.as_millis()).unwrap_or(1000),
    }))
}

/// Progress and heartbeat.
pub async fn progress(
    State(state): State<AppState>,
    auth: WorkerAuth,
    Path(id): Path<String>,
    body: Result<Json<ProgressBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let body = json_body(body)?;
    check_attempt(&auth, body.attempt)?;
    let lora = own_lora(&state, &auth, &id).await?;
    hold(&state, &auth, &lora).await?;
    let next = next_progress(&lora.progress, &body)?;
    if next != lora.progress {
        state.repo().record_progress(lora.id, &next, state.now()).await?;
        state.notify_changed(lora.id);
    }
    Ok(Json(json!({ "continue": true })))
}

/// The progress after a worker's report.
fn next_progress(current: &Progress, body: &ProgressBody) -> ApiResult<Progress> {
    let mut p = current.clone();
    if let Some(stage) = &body.stage {
        let ok = (1..=64).contains(&stage.len()) && stage.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !ok {
            return Err(ApiError::bad_request("invalid_request", "`stage` must be 1–64 lower-case letters or `_`"));
        }
        p.stage = Some(stage.clone());
    }
    if let (Some(step), Some(total)) = (body.step, body.total) {
        let total = total.max(1);
        p.percent = u8::try_from(step.min(total) * 100 / total).unwrap_or(100);
        p.estimated_remaining =
            body.eta_s.filter(|e| e.is_finite() && *e >= 0.0).map(|e| e.ceil().min(f64::from(u32::MAX)) as u32);
    }
    if p.stage.as_deref() == Some("done") {
        p.percent = 100;
        p.estimated_remaining = Some(0);
    }
    Ok(p)
}

/// Training ended well and the files are uploaded: check, validate, decide.
pub async fn result(
    State(state): State<AppState>,
    auth: WorkerAuth,
    Path(id): Path<String>,
    body: Result<Json<ResultBody>, JsonRejection>,
) -> ApiResult<Json<ResultAnswer>> {
    let body = json_body(body)?;
    check_attempt(&auth, body.attempt)?;
    let lora = own_lora(&state, &auth, &id).await?;
    let keys = OutputKeys::of(lora.creator.id, &lora);
    // A repeated post of a result that was applied answers the same.
    if lora.status != TrainingStatus::Training && lora.storage_key.as_deref() == Some(keys.model.as_str()) {
        return Ok(Json(ResultAnswer { status: lora.status, error: lora.error }));
    }
    hold(&state, &auth, &lora).await?;
    let answer = after_training(&state, &lora, &keys, &body).await?;
    state.notify_changed(lora.id);
    tracing::info!(lora = %lora.id, status = %answer.status, error = ?answer.error,
        train_seconds = ?body.train_seconds, trainer_seconds = ?body.trainer_seconds, "training result");
    Ok(Json(answer))
}

/// PRD 2 steps 12–19 on the stored files.
async fn after_training(
    state: &AppState,
    lora: &LoraModel,
    keys: &OutputKeys,
    body: &ResultBody,
) -> ApiResult<ResultAnswer> {
    let store = state.store();
    let missing = |key: &str, why: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "upload_missing", format!("{key}: {why}; upload it again"))
    };
    let size_of = async |key: &str, expected: u64| -> ApiResult<u64> {
        match store.head(key).await? {
            Some(meta) if meta.size == expected => Ok(meta.size),
            Some(meta) => Err(missing(key, format!("stored {} bytes, the worker reported {expected}", meta.size))),
            None => Err(missing(key, "not stored".into())),
        }
    };
    let file_size = size_of(&keys.model, body.model.bytes).await?;
    if let Some(kohya) = &body.kohya {
        size_of(&keys.kohya, kohya.bytes).await?;
    }
    let images = body.validation.images.min(VALIDATION_IMAGES);
    let mut image_keys = Vec::with_capacity(images);
    for key in keys.validation.iter().take(images) {
        if store.head(key).await?.is_none() {
            return Err(missing(key, "not stored".into()));
        }
        image_keys.push(key.clone());
    }
    let files = TrainedFiles { storage_key: keys.model.clone(), file_size, validation_image_keys: image_keys };

    let now = state.now();
    let bytes = store.get(&keys.model).await?;
    let rules = state.settings().lora_rules.clone();
    let check = tokio::task::spawn_blocking(move || loraforge_checks::inspect_lora(&bytes, &rules).map(|_| ()))
        .await
        .map_err(|e| ApiError::internal("LoRA file check", &e))?;
    if let Err(problem) = check {
        let reason = format!("the trained file failed its check: {problem}");
        let detail = EventDetail { error: Some(reason), outputs: Some(files), validation_passed: None };
        let lora = state.repo().apply_event(lora.id, StatusEvent::Fail, detail, now).await?;
        return Ok(ResultAnswer { status: lora.status, error: lora.error });
    }

    let detail = EventDetail { outputs: Some(files), ..EventDetail::default() };
    let validating = state.repo().apply_event(lora.id, StatusEvent::BeginValidation, detail, now).await?;
    let v = &state.settings().validation;
    let verdict = judge(images, body.validation.scores.as_deref(), v.similarity_threshold, v.auto_approve);
    let done = match verdict {
        Verdict::Pass => {
            let detail = EventDetail { validation_passed: Some(true), ..EventDetail::default() };
            state.repo().apply_event(lora.id, StatusEvent::Complete, detail, now).await?
        }
        Verdict::Fail(reason) => {
            let detail = EventDetail { error: Some(reason), validation_passed: Some(false), ..EventDetail::default() };
            state.repo().apply_event(lora.id, StatusEvent::Fail, detail, now).await?
        }
        Verdict::NeedsReview => {
            let progress = Progress { stage: Some("awaiting_review".into()), percent: 100, estimated_remaining: None };
            state.repo().record_progress(lora.id, &progress, now).await?;
            validating
        }
    };
    Ok(ResultAnswer { status: done.status, error: done.error })
}
