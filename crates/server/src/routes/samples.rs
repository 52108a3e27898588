//! `/api/v1/lora-models/{id}/samples`: images rendered with a completed LoRA (the library's "try
//! it", and PRD 1's option B pre-processing for video models that cannot take a LoRA). A request
//! is checked by `domain::samples`, stored as a `queued` batch under the caller's open-batch
//! limit, and rendered by the job engine on a training backend (`engine::samples`); listings show
//! each batch's status and, once completed, signed links to its images.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use loraforge_db::{BatchInsert, NewSampleBatch, SampleBatch};
use loraforge_domain::samples::{
    MAX_OPEN_BATCHES_PER_USER, SampleRequestInput, SampleSpec, SampleStatus,
};
use loraforge_domain::{LoraModel, SampleBatchId, TrainingStatus};

use crate::auth::AuthUser;
use crate::body;
use crate::error::{ApiError, ApiResult, body_error};
use crate::routes::lora_models::{DEFAULT_PAGE, MAX_PAGE, load};
use crate::state::AppState;
use crate::views::ErrorBody;

/// The listing's query: pages as the library's (`GET /api/v1/lora-models`) do.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SampleListParams {
    /// 1–100, default 50.
    pub limit: Option<u32>,
    /// Batches to skip (newest first), default 0.
    pub offset: Option<u64>,
}

/// One image of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct SampleImageView {
    pub index: u32,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub scale: f64,
    pub width: u32,
    pub height: u32,
    /// A signed PNG link, once the batch is completed.
    pub url: Option<String>,
}

/// A sample batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct SampleBatchView {
    pub id: Uuid,
    pub lora_id: Uuid,
    /// `queued`, `rendering`, `completed` or `failed`.
    pub status: String,
    pub steps: u32,
    /// Attempts started (at most 3).
    pub attempts: u32,
    /// Why the last attempt failed (a failed batch: why it gave up).
    pub error: Option<String>,
    /// When the next attempt may start, while queued.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When the image links expire (completed batches).
    pub urls_expire_at: Option<DateTime<Utc>>,
    pub images: Vec<SampleImageView>,
}

/// One page of batches, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SampleBatchList {
    pub batches: Vec<SampleBatchView>,
    /// Batches on every page (the caller's own; an admin's: everyone's).
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

async fn view(state: &AppState, b: &SampleBatch) -> ApiResult<SampleBatchView> {
    let (now, ttl) = (state.now(), state.settings().download_url_ttl);
    let completed = b.status == SampleStatus::Completed;
    let mut images = Vec::with_capacity(b.images.len());
    for im in &b.images {
        let url = if completed {
            Some(
                state
                    .store()
                    .signed_get_url(&im.storage_key, ttl, now)
                    .await?
                    .to_string(),
            )
        } else {
            None
        };
        images.push(SampleImageView {
            index: im.index,
            prompt: im.prompt.clone(),
            negative_prompt: im.negative_prompt.clone(),
            seed: im.seed,
            scale: im.scale,
            width: im.width,
            height: im.height,
            url,
        });
    }
    Ok(SampleBatchView {
        id: b.id.0,
        lora_id: b.lora_id.0,
        status: b.status.as_str().to_owned(),
        steps: b.steps,
        attempts: b.attempts,
        error: b.last_error.clone(),
        next_attempt_at: (b.status == SampleStatus::Queued).then_some(b.next_attempt_at),
        created_at: b.created_at,
        finished_at: b.finished_at,
        urls_expire_at: completed
            .then(|| now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1))),
        images,
    })
}

fn completed(lora: &LoraModel) -> ApiResult<()> {
    if lora.status != TrainingStatus::Completed || lora.storage_key.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_completed",
            format!(
                "samples need a completed LoRA; this one is {}",
                lora.status.as_str()
            ),
        ));
    }
    Ok(())
}

fn request_error(e: &body::BodyError) -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        match e.top_field() {
            Some(f) => format!("{f}: {}", e.message),
            None => format!(
                "the body must be a JSON object with `prompts`: {}",
                e.message
            ),
        },
    )
}

/// Renders 1–4 images with a completed LoRA (SDXL with the LoRA loaded as a generator loads it),
/// on the training backends; 3 attempts with backoff.
#[utoipa::path(post, path = "/api/v1/lora-models/{id}/samples", request_body = SampleRequestInput,
    tag = "library", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 202, body = SampleBatchView),
        (status = 400, description = "invalid_json, invalid_request, invalid_prompt_count, invalid_prompt, invalid_seed, invalid_scale, invalid_size or invalid_steps", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "not_completed: the LoRA has no trained file yet", body = ErrorBody),
        (status = 429, description = "too_many_sample_batches: the caller already has 2 batches queued or rendering", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let lora = load(&state, &id).await?;
    let body = body.map_err(body_error)?;
    let input: SampleRequestInput =
        body::from_value(body::json_value(&body)?).map_err(|e| request_error(&e))?;
    let batch_id = SampleBatchId::new();
    let spec = SampleSpec::parse(input, batch_id)
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    completed(&lora)?;
    let new = NewSampleBatch {
        id: batch_id,
        lora_id: lora.id,
        user_id: user.id,
        spec,
    };
    match state
        .repo()
        .insert_sample_batch(&new, MAX_OPEN_BATCHES_PER_USER, state.now())
        .await?
    {
        BatchInsert::Inserted(batch) => {
            state.wake_engine();
            let v = view(&state, &batch).await?;
            Ok((StatusCode::ACCEPTED, Json(v)).into_response())
        }
        BatchInsert::TooManyOpen { open } => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sample_batches",
            format!(
                "you have {open} sample batches queued or rendering (at most {MAX_OPEN_BATCHES_PER_USER}); \
                 try again when one finishes"
            ),
        )
        .retry(30)),
    }
}

/// The caller's sample batches of a LoRA (admins: everyone's), newest first, a page at a time
/// (`limit` 1–100, default 50, and `offset`, as the library pages).
#[utoipa::path(get, path = "/api/v1/lora-models/{id}/samples", tag = "library",
    security(("bearer" = [])), params(("id" = Uuid, Path), SampleListParams),
    responses((status = 200, body = SampleBatchList),
        (status = 400, description = "invalid_query: a bad `limit` or `offset`", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    q: Result<Query<SampleListParams>, QueryRejection>,
) -> ApiResult<Json<SampleBatchList>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be from 1 to {MAX_PAGE}"),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    let lora = load(&state, &id).await?;
    let requester = (!user.is_admin).then_some(user.id);
    let page = state
        .repo()
        .sample_batches_of(lora.id, requester, limit, offset)
        .await?;
    let mut batches = Vec::with_capacity(page.batches.len());
    for b in &page.batches {
        batches.push(view(&state, b).await?);
    }
    Ok(Json(SampleBatchList {
        batches,
        total: page.total,
        limit,
        offset,
    }))
}

/// One sample batch (the caller's own; admins: any).
#[utoipa::path(get, path = "/api/v1/lora-models/{id}/samples/{batch}", tag = "library",
    security(("bearer" = [])), params(("id" = Uuid, Path), ("batch" = Uuid, Path)),
    responses((status = 200, body = SampleBatchView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, batch)): Path<(String, String)>,
) -> ApiResult<Json<SampleBatchView>> {
    let lora = load(&state, &id).await?;
    let batch: SampleBatchId = batch
        .parse()
        .map_err(|_| ApiError::not_found("sample batch"))?;
    let b = state
        .repo()
        .sample_batch(batch)
        .await?
        .filter(|b| b.lora_id == lora.id && (b.user_id == user.id || user.is_admin))
        .ok_or_else(|| ApiError::not_found("sample batch"))?;
    Ok(Json(view(&state, &b).await?))
}
