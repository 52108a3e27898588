//! `/api/v1/worker/jobs/{id}`: the worker protocol (`docs/worker-protocol.md`). A worker holds a
//! per-attempt token ([`WorkerAuth`]); every call checks that its engine still holds the job's
//! lease for that attempt, and extends the lease (a call is a heartbeat). How a run ends is
//! reported here, never inferred from an exit code: the result (`…/result`) and a failure
//! (`…/failure`) are recorded on the run's record (first report wins) and the job engine acts on
//! them (the after-training steps, a requeue, a failure), so a crash between the report and the
//! decision loses nothing.
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use loraforge_db::JobClaim;
use loraforge_domain::keys::{self, OutputKeys};
use loraforge_domain::{
    Dataset, LoraModel, Progress, RunResult, TrainingRun, TrainingStatus, caption_for_training,
    outcome,
};

use crate::auth::WorkerAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::lora_models::load;
use crate::state::AppState;
use crate::views::ErrorBody;

/// `GET /api/v1/worker/jobs/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkerJob {
    pub lora_id: String,
    pub attempt: u32,
    /// Handed to the trainer as its `--spec` (trainer/README.md).
    #[schema(value_type = Object)]
    pub trainer_spec: Value,
    pub images: Vec<JobImage>,
    pub uploads: Uploads,
    pub checkpoint: CheckpointPlan,
    pub heartbeat_interval_s: u64,
    pub progress_interval_ms: u64,
    /// A signed GET link (no bearer token needed, it expires with the job token) to a zip of
    /// the images and their captions, laid out as the worker lays them out (`NN.ext` as in
    /// `images`, `NN.txt` holding `caption`): for providers that run the trainer without the
    /// worker (Replicate). Absent when the server has no public URL.
    pub dataset_zip: Option<String>,
}

/// Where the attempt uploads its checkpoints, and the one to resume from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointPlan {
    /// `PUT` each new checkpoint here (the newest replaces the last), then `POST …/checkpoint`.
    pub upload: UploadTarget,
    /// The newest checkpoint of an earlier attempt, if any: download it and resume.
    pub resume: Option<ResumeFrom>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResumeFrom {
    pub url: String,
    pub step: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobImage {
    /// `NN.ext`: safe to use as a file name as is.
    pub file_name: String,
    pub url: String,
    pub bytes: u64,
    /// Already holds the trigger word.
    pub caption: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Uploads {
    pub model: UploadTarget,
    pub kohya: UploadTarget,
    pub validation: Vec<UploadTarget>,
}

/// One image of a job as the trainer gets it: the one naming rule for the job's `images` and
/// the dataset zip.
#[derive(Debug, Clone)]
pub(crate) struct TrainingImage {
    /// `NN.ext`.
    pub file_name: String,
    /// `NN.txt`.
    pub caption_name: String,
    pub storage_key: String,
    pub bytes: u64,
    /// Already holds the trigger word.
    pub caption: String,
}

/// The images of `dataset` as LoRA `lora` trains on them, in order.
pub(crate) fn training_images(lora: &LoraModel, dataset: &Dataset) -> Vec<TrainingImage> {
    dataset
        .images
        .iter()
        .enumerate()
        .map(|(i, img)| TrainingImage {
            file_name: format!("{i:02}.{}", img.format.extension()),
            caption_name: format!("{i:02}.txt"),
            storage_key: img.storage_key.clone(),
            bytes: img.bytes,
            caption: caption_for_training(
                img.caption.as_deref(),
                &lora.params.trigger_words,
                &lora.name,
            ),
        })
        .collect()
}

/// The LoRA's dataset, or 409 `dataset_gone`.
pub(crate) async fn dataset_of(state: &AppState, lora: &LoraModel) -> ApiResult<Dataset> {
    state
        .repo()
        .get_dataset(lora.dataset_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "dataset_gone",
                "the LoRA's dataset no longer exists",
            )
        })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadTarget {
    pub key: String,
    pub url: String,
}

/// `POST …/progress`: everything but `attempt` optional; only `attempt` is a heartbeat.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ProgressBody {
    pub attempt: u32,
    pub stage: Option<String>,
    pub step: Option<u64>,
    pub total: Option<u64>,
    pub loss: Option<f64>,
    pub eta_s: Option<f64>,
}

/// `POST …/checkpoint`: the attempt uploaded a checkpoint of `step` (`bytes` long) to its
/// checkpoint link.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CheckpointBody {
    pub attempt: u32,
    pub step: u64,
    pub bytes: u64,
}

/// `POST …/failure`: how an attempt ended when it did not train (a code of
/// `domain::outcome`, the reporter's reason, whether it may pass).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FailureBody {
    pub attempt: u32,
    pub code: String,
    pub reason: Option<String>,
    #[serde(default)]
    pub retryable: bool,
}

/// The answer to a result or a failure: whether this report was recorded (a repeated or late
/// one is not, and that is fine), and the LoRA's status now.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ReportAnswer {
    pub recorded: bool,
    #[schema(value_type = String)]
    pub status: TrainingStatus,
    pub error: Option<String>,
}

/// The answer to a progress report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProgressAnswer {
    /// Always true: a worker whose attempt no longer holds the job gets 409 instead.
    #[serde(rename = "continue")]
    pub keep_going: bool,
}

/// The answer to a checkpoint report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointAnswer {
    pub recorded: bool,
}

/// Longest reason kept from a worker, in characters.
const MAX_REASON: usize = 2000;

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))
}

pub(crate) fn not_active(lora: &LoraModel, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "job_not_active",
        format!(
            "this attempt no longer holds the job ({why}; the LoRA is {}); stop working on it",
            lora.status
        ),
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

/// Checks the token's attempt still holds the job and extends its lease; returns the claim as
/// it was read (its checkpoint too).
async fn hold(state: &AppState, auth: &WorkerAuth, lora: &LoraModel) -> ApiResult<JobClaim> {
    if lora.status != TrainingStatus::Training {
        return Err(not_active(lora, "it is not training"));
    }
    let claim = state
        .repo()
        .job_claim(lora.id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    if claim.worker.as_deref() != Some(auth.worker_id.as_str()) || claim.attempt != auth.attempt {
        return Err(not_active(lora, "another attempt holds it"));
    }
    let now = state.now();
    let lease = now
        + chrono::Duration::from_std(state.settings().worker.lease)
            .unwrap_or(chrono::Duration::minutes(2));
    if !state
        .repo()
        .heartbeat(lora.id, &auth.worker_id, lease, now)
        .await?
    {
        return Err(not_active(lora, "its lease was taken"));
    }
    Ok(claim)
}

fn check_attempt(auth: &WorkerAuth, attempt: u32) -> ApiResult<()> {
    if attempt != auth.attempt {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "`attempt` is {attempt} but the token is for attempt {}",
                auth.attempt
            ),
        ));
    }
    Ok(())
}

/// The job of the token's attempt: the trainer's spec, signed image links, signed upload links.
#[utoipa::path(get, path = "/api/v1/worker/jobs/{id}", tag = "worker", security(("worker" = [])), params(("id" = uuid::Uuid, Path, description = "the LoRA (job) id")),
    responses((status = 200, body = WorkerJob), (status = 403, description = "forbidden: the token is for another LoRA", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "job_not_active, or dataset_gone", body = ErrorBody)))]
pub async fn job(
    State(state): State<AppState>,
    auth: WorkerAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerJob>> {
    let lora = own_lora(&state, &auth, &id).await?;
    let claim = hold(&state, &auth, &lora).await?;
    let dataset = dataset_of(&state, &lora).await?;
    let settings = state.settings();
    let (now, ttl) = (state.now(), settings.worker.url_ttl);
    let mut images = Vec::with_capacity(dataset.images.len());
    for img in training_images(&lora, &dataset) {
        images.push(JobImage {
            url: state
                .store()
                .signed_get_url(&img.storage_key, ttl, now)
                .await?
                .to_string(),
            file_name: img.file_name,
            bytes: img.bytes,
            caption: img.caption,
        });
    }
    let dataset_zip = crate::routes::dataset_zip::link(&state, &auth)?;
    let keys = OutputKeys::of(lora.creator.id, lora.id);
    let target = async |key: &String| -> ApiResult<UploadTarget> {
        Ok(UploadTarget {
            key: key.clone(),
            url: state
                .store()
                .signed_put_url(key, ttl, now)
                .await?
                .to_string(),
        })
    };
    let mut validation = Vec::new();
    for key in &keys.validation {
        validation.push(target(key).await?);
    }
    let uploads = Uploads {
        model: target(&keys.model).await?,
        kohya: target(&keys.kohya).await?,
        validation,
    };
    let resume = match claim.checkpoint {
        Some((key, step)) => match state.store().head(&key).await? {
            Some(meta) => Some(ResumeFrom {
                url: state
                    .store()
                    .signed_get_url(&key, ttl, now)
                    .await?
                    .to_string(),
                step,
                bytes: meta.size,
            }),
            None => None,
        },
        None => None,
    };
    let checkpoint = CheckpointPlan {
        upload: target(&keys::checkpoint(lora.creator.id, lora.id, auth.attempt)).await?,
        resume,
    };
    let mut spec =
        serde_json::to_value(&lora.params).map_err(|e| ApiError::internal("trainer spec", &e))?;
    if let Some(obj) = spec.as_object_mut() {
        obj.insert("job_id".into(), json!(lora.id.to_string()));
        obj.insert(
            "validation".into(),
            json!({ "enabled": true, "scorer": settings.validation.scorer }),
        );
        if let Some(every) = settings.worker.checkpoint_every {
            obj.insert("checkpoint_every".into(), json!(every));
        }
    }
    Ok(Json(WorkerJob {
        lora_id: lora.id.to_string(),
        attempt: auth.attempt,
        trainer_spec: spec,
        images,
        uploads,
        checkpoint,
        heartbeat_interval_s: settings.worker.heartbeat_interval.as_secs().max(1),
        progress_interval_ms: u64::try_from(settings.worker.progress_interval.as_millis())
            .unwrap_or(1000),
        dataset_zip,
    }))
}

/// Progress and heartbeat.
#[utoipa::path(post, path = "/api/v1/worker/jobs/{id}/progress", tag = "worker", request_body = ProgressBody, security(("worker" = [])), params(("id" = uuid::Uuid, Path, description = "the LoRA (job) id")),
    responses((status = 200, body = ProgressAnswer), (status = 400, body = ErrorBody), (status = 403, description = "forbidden: the token is for another LoRA", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "job_not_active: this attempt no longer holds the job", body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn progress(
    State(state): State<AppState>,
    auth: WorkerAuth,
    Path(id): Path<String>,
    body: Result<Json<ProgressBody>, JsonRejection>,
) -> ApiResult<Json<ProgressAnswer>> {
    let body = json_body(body)?;
    check_attempt(&auth, body.attempt)?;
    let lora = own_lora(&state, &auth, &id).await?;
    hold(&state, &auth, &lora).await?;
    let next = next_progress(&lora.progress, &body)?;
    if next != lora.progress {
        state
            .repo()
            .record_progress(lora.id, &next, state.now())
            .await?;
        state.notify_changed(lora.id);
    }
    Ok(Json(ProgressAnswer { keep_going: true }))
}

/// The progress after a worker's report.
fn next_progress(current: &Progress, body: &ProgressBody) -> ApiResult<Progress> {
    let mut p = current.clone();
    if let Some(stage) = &body.stage {
        let ok = (1..=64).contains(&stage.len())
            && stage.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !ok {
            return Err(ApiError::bad_request(
                "invalid_request",
                "`stage` must be 1–64 lower-case letters or `_`",
            ));
        }
        p.stage = Some(stage.clone());
    }
    if let (Some(step), Some(total)) = (body.step, body.total) {
        let total = total.max(1);
        p.percent = u8::try_from(step.min(total) * 100 / total).unwrap_or(100);
        p.estimated_remaining = body
            .eta_s
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| e.ceil().min(f64::from(u32::MAX)) as u32);
    }
    if p.stage.as_deref() == Some("done") {
        p.percent = 100;
        p.estimated_remaining = Some(0);
    }
    Ok(p)
}

/// A checkpoint was uploaded: it becomes the one the next attempt resumes from (the one before
/// it is deleted).
#[utoipa::path(post, path = "/api/v1/worker/jobs/{id}/checkpoint", tag = "worker", request_body = CheckpointBody, security(("worker" = [])), params(("id" = uuid::Uuid, Path, description = "the LoRA (job) id")),
    responses((status = 200, body = CheckpointAnswer), (status = 400, body = ErrorBody), (status = 403, description = "forbidden: the token is for another LoRA", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "job_not_active: this attempt no longer holds the job", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "upload_missing: the checkpoint is not stored at its link with that size", body = ErrorBody)))]
pub async fn checkpoint(
    State(state): State<AppState>,
    auth: WorkerAuth,
    Path(id): Path<String>,
    body: Result<Json<CheckpointBody>, JsonRejection>,
) -> ApiResult<Json<CheckpointAnswer>> {
    let body = json_body(body)?;
    check_attempt(&auth, body.attempt)?;
    let lora = own_lora(&state, &auth, &id).await?;
    let claim = hold(&state, &auth, &lora).await?;
    let key = keys::checkpoint(lora.creator.id, lora.id, auth.attempt);
    match state.store().head(&key).await? {
        Some(meta) if meta.size == body.bytes => {}
        Some(meta) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "upload_missing",
                format!(
                    "{key} holds {} bytes, not {}; upload it again",
                    meta.size, body.bytes
                ),
            ));
        }
        None => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "upload_missing",
                format!("{key} is not stored; upload it first"),
            ));
        }
    }
    let previous = claim.checkpoint.map(|(k, _)| k);
    if !state
        .repo()
        .record_checkpoint(lora.id, &auth.worker_id, auth.attempt, &key, body.step)
        .await?
    {
        return Err(not_active(&lora, "another attempt holds it"));
    }
    if let Some(old) = previous.filter(|old| *old != key)
        && let Err(e) = state.store().delete(&old).await
    {
        tracing::warn!(lora = %lora.id, key = %old, error = %e, "could not delete an older checkpoint");
    }
    tracing::info!(lora = %lora.id, attempt = auth.attempt, step = body.step, bytes = body.bytes, "checkpoint stored");
    Ok(Json(CheckpointAnswer { recorded: true }))
}

/// The record of the token's attempt. A worker may report before the engine recorded its run
/// (a fast failure); then it retries (503 with a code saying so).
async fn attempt_run(state: &AppState, lora: &LoraModel, attempt: u32) -> ApiResult<TrainingRun> {
    let runs = state.repo().runs_of(lora.id).await?;
    runs.into_iter()
        .find(|r| r.attempt == attempt)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "run_not_recorded",
                "this attempt's run is not recorded yet; report again in a moment",
            )
        })
}

/// Training ended well and the files are uploaded: the result is recorded on the run and the
/// engine runs the after-training steps (file check, LoRA check, validation, publish).
#[utoipa::path(post, path = "/api/v1/worker/jobs/{id}/result", tag = "worker", request_body = RunResult, security(("worker" = [])), params(("id" = uuid::Uuid, Path, description = "the LoRA (job) id")),
    responses((status = 200, body = ReportAnswer), (status = 400, body = ErrorBody), (status = 403, description = "forbidden: the token is for another LoRA", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "job_not_active: this attempt no longer holds the job", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, description = "run_not_recorded: report again in a moment", body = ErrorBody)))]
pub async fn result(
    State(state): State<AppState>,
    auth: WorkerAuth,
    Path(id): Path<String>,
    body: Result<Json<RunResult>, JsonRejection>,
) -> ApiResult<Json<ReportAnswer>> {
    let body = json_body(body)?;
    check_attempt(&auth, u32::try_from(body.attempt).unwrap_or(u32::MAX))?;
    let lora = own_lora(&state, &auth, &id).await?;
    let run = attempt_run(&state, &lora, auth.attempt).await?;
    // A repeated post of a result that was recorded answers the same.
    if run.outcome.as_deref() == Some("trained") {
        return Ok(Json(ReportAnswer {
            recorded: false,
            status: lora.status,
            error: lora.error,
        }));
    }
    hold(&state, &auth, &lora).await?;
    let facts = serde_json::to_value(&body).map_err(|e| ApiError::internal("the result", &e))?;
    let recorded = state
        .repo()
        .record_run_outcome(run.id, "trained", None, Some(&facts), state.now())
        .await?;
    state.notify_changed(lora.id);
    tracing::info!(lora = %lora.id, attempt = auth.attempt, recorded, train_seconds = ?body.train_seconds,
        trainer_seconds = ?body.trainer_seconds, "training result");
    Ok(Json(ReportAnswer {
        recorded,
        status: lora.status,
        error: lora.error,
    }))
}

/// The attempt ended without training: its outcome is recorded on the run (unless another was
/// first, e.g. the LoRA was cancelled) and the engine decides (a requeue or a failure).
#[utoipa::path(post, path = "/api/v1/worker/jobs/{id}/failure", tag = "worker", request_body = FailureBody, security(("worker" = [])), params(("id" = uuid::Uuid, Path, description = "the LoRA (job) id")),
    responses((status = 200, body = ReportAnswer), (status = 400, body = ErrorBody), (status = 403, description = "forbidden: the token is for another LoRA", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "job_not_active: this attempt no longer holds the job", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, description = "run_not_recorded: report again in a moment", body = ErrorBody)))]
pub async fn failure(
    State(state): State<AppState>,
    auth: WorkerAuth,
    Path(id): Path<String>,
    body: Result<Json<FailureBody>, JsonRejection>,
) -> ApiResult<Json<ReportAnswer>> {
    let body = json_body(body)?;
    check_attempt(&auth, body.attempt)?;
    let reason = failure_reason(&body.code, body.reason.as_deref())?;
    let lora = own_lora(&state, &auth, &id).await?;
    let run = attempt_run(&state, &lora, auth.attempt).await?;
    let facts = serde_json::json!({ "retryable": body.retryable });
    let recorded = state
        .repo()
        .record_run_outcome(
            run.id,
            &body.code,
            reason.as_deref(),
            Some(&facts),
            state.now(),
        )
        .await?;
    state.notify_changed(lora.id);
    tracing::info!(lora = %lora.id, attempt = auth.attempt, code = %body.code, recorded, reason = ?reason, "worker reported a failure");
    Ok(Json(ReportAnswer {
        recorded,
        status: lora.status,
        error: lora.error,
    }))
}

/// A failure report's `code` (an outcome code of docs/worker-protocol.md, not `trained`) and its
/// reason for people, without control characters and at most `MAX_REASON` characters. Training
/// and sample workers report failures with the same two fields.
pub(crate) fn failure_reason(code: &str, reason: Option<&str>) -> ApiResult<Option<String>> {
    if !outcome::is_valid_code(code) || code == "trained" {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`code` must be an outcome code of docs/worker-protocol.md (1–64 of a-z, 0-9 and _), not `trained`",
        ));
    }
    Ok(reason.map(|r| {
        r.chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON)
            .collect()
    }))
}
