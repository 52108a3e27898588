//! The worker protocol's sample routes: a sample worker (token audience
//! `loraforge-sample-worker`, [`SampleWorkerAuth`]) fetches its batch (base model, a signed link
//! to the LoRA file, the images to render, signed upload links), sends heartbeats while it
//! renders and uploads, then reports the stored images or its failure. Every call checks that
//! the batch still renders the token's attempt, so a stale attempt cannot report into a newer
//! one; the fetch and each heartbeat record when the worker was last heard of, which the engine
//! holds against its lease (`domain::samples::worker_silent`). What happens next (retry, fail,
//! ending the instance) is the engine's (`engine::samples`).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use loraforge_db::SampleBatch;
use loraforge_domain::SampleBatchId;
use loraforge_domain::sample_wire::{
    SampleFailure, SampleHeartbeat, SampleJob, SampleReportAnswer, SampleResult,
    SampleTrainerImage, SampleUpload,
};
use loraforge_domain::samples::{SampleSpec, SampleStatus, failure_is_retryable};

use crate::auth::SampleWorkerAuth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::ErrorBody;

/// The token's batch, rendering the token's attempt.
async fn own_batch(state: &AppState, auth: &SampleWorkerAuth, id: &str) -> ApiResult<SampleBatch> {
    let id: SampleBatchId = id
        .parse()
        .map_err(|_| ApiError::not_found("sample batch"))?;
    if id != auth.batch {
        return Err(ApiError::forbidden("the token is for another sample batch"));
    }
    let b = state
        .repo()
        .sample_batch(id)
        .await?
        .ok_or_else(|| ApiError::not_found("sample batch"))?;
    if b.status != SampleStatus::Rendering || b.attempts != auth.attempt {
        return Err(not_active(
            auth,
            &format!("the batch is {}, attempt {}", b.status.as_str(), b.attempts),
        ));
    }
    Ok(b)
}

/// 409 `job_not_active`: the token's attempt is not the one rendering.
fn not_active(auth: &SampleWorkerAuth, now: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "job_not_active",
        format!(
            "attempt {} of this batch is no longer rendering ({now})",
            auth.attempt
        ),
    )
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))
}

fn check_attempt(auth: &SampleWorkerAuth, attempt: u32) -> ApiResult<()> {
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

/// What the attempt renders, with signed links.
#[utoipa::path(get, path = "/api/v1/worker/samples/{id}", tag = "worker", security(("worker" = [])),
    params(("id" = uuid::Uuid, Path, description = "the sample batch id")),
    responses((status = 200, body = SampleJob), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "job_not_active: the batch no longer renders this attempt, or not_completed: the LoRA lost its file", body = ErrorBody)))]
pub async fn job(
    State(state): State<AppState>,
    auth: SampleWorkerAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<SampleJob>> {
    let b = own_batch(&state, &auth, &id).await?;
    // The worker's first word: from now on its heartbeats must keep coming.
    state
        .repo()
        .record_sample_heartbeat(b.id, auth.attempt, state.now())
        .await?;
    let lora = state
        .repo()
        .get_lora(b.lora_id)
        .await?
        .ok_or_else(|| ApiError::not_found("LoRA"))?;
    let Some(model_key) = lora.storage_key.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_completed",
            "the LoRA has no trained file",
        ));
    };
    let (now, ttl) = (state.now(), state.settings().worker.url_ttl);
    let store = state.store();
    let lora_url = store
        .signed_get_url(&model_key, ttl, now)
        .await?
        .to_string();
    let lora_bytes = store.head(&model_key).await?.map(|m| m.size);
    let mut uploads = Vec::with_capacity(b.images.len());
    for im in &b.images {
        uploads.push(SampleUpload {
            index: im.index,
            key: im.storage_key.clone(),
            url: store
                .signed_put_url(&im.storage_key, ttl, now)
                .await?
                .to_string(),
        });
    }
    let spec = SampleSpec {
        prompts: b
            .images
            .iter()
            .map(|im| loraforge_domain::samples::SamplePrompt {
                prompt: im.prompt.clone(),
                negative_prompt: im.negative_prompt.clone(),
                seed: im.seed,
                scale: im.scale,
            })
            .collect(),
        width: b.images.first().map_or(1024, |im| im.width),
        height: b.images.first().map_or(1024, |im| im.height),
        steps: b.steps,
    };
    Ok(Json(SampleJob {
        batch_id: b.id.to_string(),
        lora_id: lora.id.to_string(),
        attempt: auth.attempt,
        base_model: lora.params.base_model.clone(),
        lora_url,
        lora_bytes,
        images: SampleTrainerImage::of(&spec),
        uploads,
        heartbeat_interval_s: state.settings().worker.heartbeat_interval.as_secs().max(1) as f64,
    }))
}

/// The attempt's worker is alive: renders and uploads go on. An attempt not heard of within the
/// engine's lease is failed `lease_expired` and retried.
#[utoipa::path(post, path = "/api/v1/worker/samples/{id}/heartbeat", tag = "worker", request_body = SampleHeartbeat,
    security(("worker" = [])), params(("id" = uuid::Uuid, Path, description = "the sample batch id")),
    responses((status = 200, description = "`recorded` true and `status` rendering", body = SampleReportAnswer),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "job_not_active: the batch no longer renders this attempt; stop", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    auth: SampleWorkerAuth,
    Path(id): Path<String>,
    body: Result<Json<SampleHeartbeat>, JsonRejection>,
) -> ApiResult<Json<SampleReportAnswer>> {
    let body = json_body(body)?;
    check_attempt(&auth, body.attempt)?;
    let b = own_batch(&state, &auth, &id).await?;
    let recorded = state
        .repo()
        .record_sample_heartbeat(b.id, auth.attempt, state.now())
        .await?;
    if !recorded {
        // The attempt moved on between the check and the write.
        return Err(not_active(&auth, "no longer rendering"));
    }
    Ok(Json(SampleReportAnswer {
        recorded,
        status: SampleStatus::Rendering.as_str().to_owned(),
    }))
}

/// Every image was uploaded: the batch is completed once each is in the store.
#[utoipa::path(post, path = "/api/v1/worker/samples/{id}/result", tag = "worker", request_body = SampleResult,
    security(("worker" = [])), params(("id" = uuid::Uuid, Path, description = "the sample batch id")),
    responses((status = 200, body = SampleReportAnswer), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "job_not_active", body = ErrorBody),
        (status = 422, description = "missing_upload: an image is not in the store", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody)))]
pub async fn result(
    State(state): State<AppState>,
    auth: SampleWorkerAuth,
    Path(id): Path<String>,
    body: Result<Json<SampleResult>, JsonRejection>,
) -> ApiResult<Json<SampleReportAnswer>> {
    let body = json_body(body)?;
    check_attempt(&auth, body.attempt)?;
    let b = own_batch(&state, &auth, &id).await?;
    // The images are ours to check: every key of the batch stored and not empty.
    for im in &b.images {
        match state.store().head(&im.storage_key).await? {
            Some(meta) if meta.size > 0 => {}
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "missing_upload",
                    format!("image {} ({}) is not stored", im.index, im.storage_key),
                ));
            }
        }
    }
    let recorded = state
        .repo()
        .complete_sample_batch(b.id, auth.attempt, state.now())
        .await?;
    state.wake_engine();
    tracing::info!(batch = %b.id, attempt = auth.attempt, recorded, "sample batch rendered");
    Ok(Json(SampleReportAnswer {
        recorded,
        status: if recorded {
            "completed"
        } else {
            b.status.as_str()
        }
        .to_owned(),
    }))
}

/// The attempt ended without images: retried after the backoff (3 attempts), or failed.
#[utoipa::path(post, path = "/api/v1/worker/samples/{id}/failure", tag = "worker", request_body = SampleFailure,
    security(("worker" = [])), params(("id" = uuid::Uuid, Path, description = "the sample batch id")),
    responses((status = 200, body = SampleReportAnswer), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "job_not_active", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody)))]
pub async fn failure(
    State(state): State<AppState>,
    auth: SampleWorkerAuth,
    Path(id): Path<String>,
    body: Result<Json<SampleFailure>, JsonRejection>,
) -> ApiResult<Json<SampleReportAnswer>> {
    let body = json_body(body)?;
    check_attempt(&auth, body.attempt)?;
    let detail = crate::routes::worker::failure_reason(&body.code, body.reason.as_deref())?;
    let b = own_batch(&state, &auth, &id).await?;
    let reason = match detail {
        Some(d) if !d.is_empty() => format!("{}: {d}", body.code),
        _ => body.code.clone(),
    };
    let to = state
        .repo()
        .fail_sample_attempt(
            b.id,
            auth.attempt,
            &reason,
            failure_is_retryable(&body.code),
            state.now(),
        )
        .await?;
    state.wake_engine();
    tracing::info!(batch = %b.id, attempt = auth.attempt, code = %body.code, ?to, "sample attempt failed");
    Ok(Json(SampleReportAnswer {
        recorded: to.is_some(),
        status: to.unwrap_or(b.status).as_str().to_owned(),
    }))
}
