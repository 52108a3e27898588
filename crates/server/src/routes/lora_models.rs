//! `/api/v1/lora-models`: the public library, creating LoRAs, their status and their lifecycle.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use uuid::Uuid;

use loraforge_db::{EventDetail, IdempotencyKey, LoraQuery};
use loraforge_domain::keys::OutputKeys;
use loraforge_domain::{
    DatasetId, LoraId, LoraModel, LoraName, LoraSort, ParamError, ParamErrorKind, ParamsInput,
    StatusEvent, TextRule, TrainingParams, TrainingStatus, text,
};

use crate::auth::AuthUser;
use crate::body;
use crate::create::{CreateLora, Created, create_lora};
use crate::error::{ApiError, ApiResult, body_error, invalid_text};
use crate::library_cache::LibraryCache;
use crate::state::AppState;
use crate::views::*;

pub const MAX_DESCRIPTION_CHARS: usize = TextRule::DESCRIPTION.max_chars;
/// The library's page sizes, which every listing that pages like it shares.
pub(crate) const MAX_PAGE: u32 = 100;
pub(crate) const DEFAULT_PAGE: u32 = 50;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only LoRAs in this status (pending, queued, training, validating, completed, failed, cancelled).
    pub status: Option<String>,
    /// Words matched by prefix in name and description, case-insensitively.
    pub search: Option<String>,
    /// Only LoRAs of this user (UUID).
    pub creator: Option<String>,
    /// popular (most used), recent (default) or name.
    pub sort: Option<String>,
    /// 1–100, default 50.
    pub limit: Option<u32>,
    pub offset: Option<u64>,
    /// Only LoRAs trained for this character (the generator's id).
    pub character_id: Option<String>,
    /// Only LoRAs this generation job asked for.
    pub triggered_by_job_id: Option<String>,
    /// Admins only: also list LoRAs an admin hid (each with `hidden`). Hidden LoRAs are never
    /// listed to others, except to their owner when `creator` is the owner's own id.
    pub include_hidden: Option<bool>,
    /// `true`: only LoRAs waiting for an admin's review (in `validating` with their checks
    /// done, stage `awaiting_review`), the ones `POST /api/v1/admin/lora-models/{id}/review`
    /// decides. The admin's review queue is `?awaiting_review=true&include_hidden=true`.
    pub awaiting_review: Option<bool>,
}

/// The public library: every user's LoRAs. Hidden LoRAs are left out (see `include_hidden`).
#[utoipa::path(get, path = "/api/v1/lora-models", params(ListParams), tag = "library",
    security(("bearer" = [])),
    responses((status = 200, body = LoraList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "forbidden: `include_hidden` without an admin token", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    q: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let status = q
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<TrainingStatus>()
                .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))
        })
        .transpose()?;
    let creator = q
        .creator
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| ApiError::bad_request("invalid_query", "creator must be a user UUID"))
        })
        .transpose()?;
    let sort = match q.sort.as_deref() {
        None | Some("") | Some("recent") => LoraSort::Recent,
        Some("popular") => LoraSort::Popular,
        Some("name") => LoraSort::Name,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("sort {other:?} is not supported; use popular, recent or name"),
            ));
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be from 1 to {MAX_PAGE}"),
        ));
    }
    let search = q.search.filter(|s| !s.trim().is_empty());
    if search.as_ref().is_some_and(|s| s.chars().count() > 200) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "search must be at most 200 characters",
        ));
    }
    let offset = q.offset.unwrap_or(0);
    if q.include_hidden == Some(true) && !user.is_admin {
        return Err(ApiError::forbidden(
            "only admins can list hidden LoRAs; to see your own, list with creator=<your user id>",
        ));
    }
    // An owner listing their own LoRAs sees the hidden ones too, with why.
    let include_hidden = q.include_hidden == Some(true) || creator == Some(user.id);
    let query = LoraQuery {
        status,
        search,
        creator,
        sort,
        limit,
        offset,
        character_id: identifier_filter(q.character_id.as_deref(), &CHARACTER_ID)?,
        triggered_by_job_id: identifier_filter(q.triggered_by_job_id.as_deref(), &JOB_ID)?,
        include_hidden,
        awaiting_review: q.awaiting_review == Some(true),
    };
    let now = state.now();
    let cache = state.library_cache();
    let key = LibraryCache::key(&query);
    let body = match cache.get(&key, now) {
        Some(body) => body,
        None if !cache.enabled() => library_page(&state, &query).await?,
        None => {
            let _gate = cache.gate(&key).await;
            match cache.get(&key, state.now()) {
                Some(body) => body,
                None => {
                    let body = library_page(&state, &query).await?;
                    cache.put(key, body.clone(), state.now());
                    body
                }
            }
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The rule for `character_id` (`TextRule::IDENTIFIER`, as the reference intake cleans it).
pub(crate) const CHARACTER_ID: TextRule = TextRule::IDENTIFIER;
/// The rule for `triggered_by_job_id`: an identifier like a character's.
pub(crate) const JOB_ID: TextRule = TextRule {
    field: "triggered_by_job_id",
    ..TextRule::IDENTIFIER
};

/// An identifier filter of the listing, cleaned like the stored value (blank: no filter).
fn identifier_filter(v: Option<&str>, rule: &TextRule) -> ApiResult<Option<String>> {
    match v.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(s) => text::clean(s, rule)
            .map(Some)
            .map_err(|e| invalid_text("invalid_query", &e)),
    }
}

/// An optional identifier of a create body, cleaned (blank or null: none).
pub(crate) fn parse_identifier(v: Option<&str>, rule: &TextRule) -> ApiResult<Option<String>> {
    match v.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(s) => text::clean(s, rule)
            .map(Some)
            .map_err(|e| invalid_text("invalid_request", &e)),
    }
}

/// One page of the library as JSON: from the in-memory library when it serves the listing,
/// else straight from the database.
async fn library_page(state: &AppState, query: &LoraQuery) -> ApiResult<Bytes> {
    if let Some(index) = state.library_index()
        && let Some(page) = index.page(state.repo_handle(), query, state.now()).await?
    {
        return Ok(Bytes::from(LoraList::json_of_serialized_items(
            &page.items,
            page.total,
            page.total_exact,
            query.limit,
            query.offset,
        )));
    }
    let page = state.repo().list_loras(query).await?;
    let list = LoraList {
        items: page
            .items
            .iter()
            .map(|s| LoraListItem::of(s, state.settings().show_creator_emails))
            .collect(),
        total: page.total,
        total_exact: page.total_exact,
        limit: query.limit,
        offset: query.offset,
    };
    let json =
        serde_json::to_vec(&list).map_err(|e| ApiError::internal("serializing the library", &e))?;
    Ok(Bytes::from(json))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateParams {
    /// `true`: check the body and answer 200 with its quotes (as `POST /api/v1/quotes`);
    /// nothing is created or reserved.
    pub dry_run: Option<bool>,
}

/// Body of `POST /api/v1/lora-models`: the type the handler parses the body with, and the one
/// its OpenAPI schema is generated from (constraints added by `openapi::document`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLoraRequest {
    /// 1–255 characters (trimmed), unique among your LoRAs.
    pub name: String,
    /// At most 10,000 characters; null or absent: none.
    pub description: Option<String>,
    /// From `POST /api/v1/datasets`.
    pub dataset_id: Uuid,
    /// Training parameters; anything left out (or null) takes the default.
    pub params: Option<ParamsInput>,
    /// An http(s) URL to POST this LoRA's events to (Standard Webhooks signatures under your
    /// `GET /api/v1/me/webhook-secret`). Must be a public address.
    #[schema(max_length = 2048)]
    pub webhook: Option<String>,
    /// Which events to send: start, progress, completed, failed, cancelled. Absent: all.
    pub webhook_events_filter: Option<Vec<String>>,
    /// The generator's character this LoRA is for (at most 255 characters); the resolve's
    /// "newest completed LoRA of the character" finds it by this.
    #[schema(max_length = 255)]
    pub character_id: Option<String>,
    /// The generation job that asked for this LoRA (at most 255 characters).
    #[schema(max_length = 255)]
    pub triggered_by_job_id: Option<String>,
}

/// Creates a LoRA from one of your datasets and queues its training.
#[utoipa::path(post, path = "/api/v1/lora-models", request_body = CreateLoraRequest, tag = "library",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "retrying with the same key returns the first result"), CreateParams),
    responses((status = 202, body = CreateLoraResponse),
        (status = 200, description = "dry_run=true: the quotes, nothing created", body = crate::quotes::QuotesView),
        (status = 402, description = "insufficient_credits (with balance_micros, available_micros, price_micros and their _usd strings)", body = ErrorBody),
        (status = 400, description = "invalid_json, invalid_request, invalid_name, invalid_description, invalid_params (with `field`) or invalid_idempotency_key", body = ErrorBody),
        (status = 404, description = "dataset_not_found", body = ErrorBody),
        (status = 409, description = "duplicate_name", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 422, description = "invalid_webhook (with `field`), idempotency_key_reused, base_model_not_allowed (with `allowed`), or incompatible_params (with `field`: e.g. `class_prompt` without `\"type\": \"dreambooth\"`)", body = ErrorBody),
        (status = 429, description = "rate_limited or monthly_limit_reached (with Retry-After)", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    query: Result<Query<CreateParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let body = body.map_err(body_error)?;
    let body_json = body::json_value(&body)?;
    let req: CreateLoraRequest =
        body::from_value(body_json.clone()).map_err(|e| create_body_error(&state, &e))?;
    let name = LoraName::parse(&req.name).map_err(|e| invalid_text("invalid_name", &e))?;
    let description = parse_description(req.description.as_deref())?;
    let dataset_id = DatasetId(req.dataset_id);
    let params = check_params(&state, req.params.as_ref())?;
    let character_id = parse_identifier(req.character_id.as_deref(), &CHARACTER_ID)?;
    let triggered_by_job_id = parse_identifier(req.triggered_by_job_id.as_deref(), &JOB_ID)?;
    let idempotency = idempotency_key(&headers, &body_json)?;
    if query.dry_run.unwrap_or(false) {
        // Checked like a create, then quoted; nothing is stored or reserved.
        let quotes = crate::quotes::quote(&state, &params).await?;
        return Ok((StatusCode::OK, Json(quotes)).into_response());
    }
    let webhook = crate::client_webhooks::parse_webhook(
        &state,
        req.webhook.as_deref(),
        req.webhook_events_filter.as_deref(),
    )
    .await?;

    let Created { lora, replayed } = create_lora(
        &state,
        &user,
        CreateLora {
            name,
            description,
            dataset_id,
            params,
            idempotency,
            webhook,
            character_id,
            triggered_by_job_id,
        },
    )
    .await?;
    let body = CreateLoraResponse {
        lora_id: lora.id.0,
        status: TrainingStatus::Pending,
        message: format!(
            "LoRA \"{}\" accepted; training starts when a slot is free. Follow it at /api/v1/lora-models/{}/status",
            lora.name, lora.id
        ),
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

/// The 400 for a create body that does not fit [`CreateLoraRequest`], with the code of the
/// field that is wrong.
fn create_body_error(state: &AppState, e: &body::BodyError) -> ApiError {
    match e.top_field() {
        Some("params") => params_body_error(state, e),
        Some("name") => {
            ApiError::bad_request("invalid_name", "name is required and must be a string")
        }
        Some("description") => ApiError::bad_request(
            "invalid_description",
            "description must be a string or null",
        ),
        Some("webhook") => {
            ApiError::bad_request("invalid_request", "webhook must be a URL string or null")
        }
        Some("webhook_events_filter") => ApiError::bad_request(
            "invalid_request",
            "webhook_events_filter must be a list of event names (start, progress, completed, failed, cancelled)",
        ),
        Some("character_id" | "triggered_by_job_id") => ApiError::bad_request(
            "invalid_request",
            format!(
                "{} must be a string of at most 255 characters or null",
                e.top_field().unwrap_or_default()
            ),
        ),
        Some("dataset_id") => ApiError::bad_request(
            "invalid_request",
            "dataset_id is required: the UUID returned by POST /api/v1/datasets",
        ),
        _ if e.message.starts_with("unknown field") => ApiError::bad_request(
            "invalid_request",
            format!(
                "unknown field {:?}; allowed fields are name, description, dataset_id, params, webhook, webhook_events_filter, character_id, triggered_by_job_id",
                e.named_field().unwrap_or_default()
            ),
        ),
        _ => ApiError::bad_request(
            "invalid_json",
            format!("the body must be a JSON object: {}", e.message),
        ),
    }
}

/// 400 `invalid_params` for a body whose `params` serde could not read, naming the field.
pub(crate) fn params_body_error(state: &AppState, e: &body::BodyError) -> ApiError {
    let field = e.path.get(1).map(String::as_str);
    let err = ParamError::from_serde(field, &e.message, &state.settings().param_limits);
    invalid_params(&err)
}

fn invalid_params(e: &ParamError) -> ApiError {
    match &e.allowed {
        // Well-formed, but not a model this operator lets the trainer download and run.
        Some(allowed) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "base_model_not_allowed",
            e.message.clone(),
        )
        .with("field", e.field.clone())
        .with("allowed", allowed.clone()),
        None => {
            let (status, code) = match e.kind {
                ParamErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid_params"),
                // Each value is fine but the run could never be trained as asked: refused now
                // rather than after spending a GPU slot.
                ParamErrorKind::Incompatible => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "incompatible_params")
                }
            };
            ApiError::new(status, code, e.to_string()).with("field", e.field.clone())
        }
    }
}

/// A request's `params` (absent: all defaults) checked into training params.
pub(crate) fn check_params(
    state: &AppState,
    input: Option<&ParamsInput>,
) -> ApiResult<TrainingParams> {
    let default = ParamsInput::default();
    TrainingParams::from_input(input.unwrap_or(&default), &state.settings().param_limits)
        .map_err(|e| invalid_params(&e))
}

/// A description (checked and normalised like all text, see `loraforge_domain::text`; blank
/// is none) or none.
pub(crate) fn parse_description(v: Option<&str>) -> ApiResult<Option<String>> {
    text::clean_optional(v, &TextRule::DESCRIPTION)
        .map_err(|e| invalid_text("invalid_description", &e))
}

fn idempotency_key(headers: &HeaderMap, body: &Value) -> ApiResult<Option<IdempotencyKey>> {
    let Some(key) = idempotency_header(headers)? else {
        return Ok(None);
    };
    // serde_json maps are ordered by key, so this is a canonical form of the request.
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    Ok(Some(IdempotencyKey {
        key,
        request_hash: hex::encode(Sha256::digest(&canonical)),
    }))
}

/// The `Idempotency-Key` header, validated.
pub(crate) fn idempotency_header(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| (1..=255).contains(&k.len()) && k.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1–255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

pub(crate) async fn load(state: &AppState, id: &str) -> ApiResult<LoraModel> {
    let id: LoraId = id.parse().map_err(|_| ApiError::not_found("LoRA"))?;
    state
        .repo()
        .get_lora(id)
        .await?
        .ok_or_else(|| ApiError::not_found("LoRA"))
}

/// [`load`] for `user`: a LoRA an admin hid is 404 to everyone but its owner and admins, as if
/// it did not exist (`LoraModel::visible_to`).
pub(crate) async fn load_visible(
    state: &AppState,
    id: &str,
    user: &AuthUser,
) -> ApiResult<LoraModel> {
    let lora = load(state, id).await?;
    if lora.visible_to(user.id, user.is_admin) {
        Ok(lora)
    } else {
        Err(ApiError::not_found("LoRA"))
    }
}

/// Everything about one LoRA, with a signed download URL once it is completed.
#[utoipa::path(get, path = "/api/v1/lora-models/{id}", tag = "library", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = LoraDetails), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<LoraDetails>> {
    let lora = load_visible(&state, &id, &user).await?;
    Ok(Json(details(&state, &lora, &user).await?))
}

async fn details(state: &AppState, lora: &LoraModel, user: &AuthUser) -> ApiResult<LoraDetails> {
    let now = state.now();
    let ttl = state.settings().download_url_ttl;
    let dataset = state.repo().get_dataset(lora.dataset_id).await?;
    let mut reference_images = Vec::new();
    let owner = lora.creator.id == user.id;
    if owner {
        for img in dataset.iter().flat_map(|d| d.images.iter()) {
            let url = state
                .store()
                .signed_get_url(&img.storage_key, ttl, now)
                .await?;
            reference_images.push(ReferenceImageView {
                file_name: img.file_name.clone(),
                width: img.width,
                height: img.height,
                url: url.to_string(),
            });
        }
    }
    // Kept 30 days (`maintenance`): a swept image gets no link rather than a dead one. The
    // lookups run together (one round trip each on S3).
    let validation_urls =
        futures::future::try_join_all(lora.validation_image_keys.iter().map(|key| async move {
            match state.store().head(key).await? {
                Some(_) => Ok::<_, loraforge_storage::StorageError>(Some(
                    state
                        .store()
                        .signed_get_url(key, ttl, now)
                        .await?
                        .to_string(),
                )),
                None => Ok(None),
            }
        }))
        .await?;
    // A hidden LoRA's file is handed out to its owner only (links given before may still run
    // out their TTL).
    let downloadable = owner || !lora.is_hidden();
    let (download_url, kohya_download_url, download_url_expires_at) =
        match (&lora.storage_key, lora.status) {
            (Some(key), TrainingStatus::Completed) if downloadable => {
                let kohya = match OutputKeys::kohya_of(key) {
                    Some(kohya_key) => match state.store().head(&kohya_key).await? {
                        Some(_) => Some(
                            state
                                .store()
                                .signed_get_url(&kohya_key, ttl, now)
                                .await?
                                .to_string(),
                        ),
                        None => None,
                    },
                    None => None,
                };
                (
                    Some(
                        state
                            .store()
                            .signed_get_url(key, ttl, now)
                            .await?
                            .to_string(),
                    ),
                    kohya,
                    Some(
                        now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1)),
                    ),
                )
            }
            _ => (None, None, None),
        };
    let attempts = if owner {
        state
            .repo()
            .runs_of(lora.id)
            .await?
            .iter()
            .map(AttemptView::from)
            .collect()
    } else {
        Vec::new()
    };
    let status = StatusView::from(lora);
    Ok(LoraDetails {
        id: lora.id.0,
        name: lora.name.clone(),
        description: lora.description.clone(),
        training_status: lora.status,
        stage: status.stage,
        progress: status.progress,
        estimated_remaining: status.estimated_remaining,
        error: status.error,
        // Owners and admins see the address; others only where the operator opted in.
        creator: CreatorView::of(
            &lora.creator,
            owner || user.is_admin || state.settings().show_creator_emails,
        ),
        usage_count: lora.usage_count,
        params: serde_json::to_value(&lora.params).unwrap_or(Value::Null),
        dataset: DatasetRefView {
            id: lora.dataset_id.0,
            image_count: dataset.as_ref().map_or(0, |d| d.images.len()),
        },
        reference_images,
        validation: ValidationView::of(lora, validation_urls),
        file_size: lora.file_size,
        download_url,
        kohya_download_url,
        download_url_expires_at,
        training_cost: lora.training_cost.into(),
        attempts,
        created_at: lora.created_at,
        updated_at: lora.updated_at,
        completed_at: lora.completed_at,
        character_id: lora.character_id.clone(),
        triggered_by_job_id: lora.triggered_by_job_id.clone(),
        hidden: lora.hidden.as_ref().map(HiddenView::from),
    })
}

/// Status, stage, progress and ETA, for polling.
#[utoipa::path(get, path = "/api/v1/lora-models/{id}/status", tag = "library", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = StatusView), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusView>> {
    Ok(Json(StatusView::from(
        &load_visible(&state, &id, &user).await?,
    )))
}

fn ensure_owner(lora: &LoraModel, user: &AuthUser, action: &str) -> ApiResult<()> {
    if lora.creator.id != user.id {
        return Err(ApiError::forbidden(format!(
            "only the LoRA's creator can {action} it"
        )));
    }
    Ok(())
}

/// Cancels a LoRA that has not finished. Owner only.
#[utoipa::path(post, path = "/api/v1/lora-models/{id}/cancel", tag = "library", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = StatusView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "invalid_state: the LoRA has finished", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<StatusView>> {
    let lora = load_visible(&state, &id, &user).await?;
    ensure_owner(&lora, &user, "cancel")?;
    let detail = EventDetail::because("cancelled by its creator");
    let lora = state
        .repo()
        .apply_event(lora.id, StatusEvent::Cancel, detail, state.now())
        .await?;
    state.notify_changed(lora.id);
    crate::credits::settle_lora(state.repo(), &lora, state.now()).await;
    tracing::info!(lora_id = %lora.id, "LoRA cancelled");
    Ok(Json(StatusView::from(&lora)))
}

/// Body of `PATCH /api/v1/lora-models/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchLora {
    /// New description (at most 10,000 characters); null clears it.
    #[serde(deserialize_with = "present")]
    #[schema(required = true)]
    pub description: Option<String>,
}

/// A field that must be present but may be null (`Option` alone would also take it absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

/// Changes the description. Owner only.
#[utoipa::path(patch, path = "/api/v1/lora-models/{id}", request_body = PatchLora, tag = "library",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = LoraDetails), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, description = "payload_too_large", body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<LoraDetails>> {
    let body = body.map_err(body_error)?;
    let req: PatchLora = body::from_value(body::json_value(&body)?).map_err(|_| {
        ApiError::bad_request(
            "invalid_request",
            "only `description` can be changed; send {\"description\": \"…\"}",
        )
    })?;
    let description = parse_description(req.description.as_deref())?;
    let lora = load_visible(&state, &id, &user).await?;
    ensure_owner(&lora, &user, "edit")?;
    let lora = state
        .repo()
        .update_description(lora.id, description, state.now())
        .await?;
    state.notify_changed(lora.id);
    Ok(Json(details(&state, &lora, &user).await?))
}
