//! `POST /api/v1/generation/resolve`: the generator's hand-off (PRD 1 Data Flow / LoRA
//! Selector, PRD 2 Scenarios 7 and 8). Per character: a LoRA ready to download, or its reference
//! images back with a stable reason. Only a malformed request is a 4xx; every LoRA problem
//! (training, failed, unknown, file gone, store down) is a `reference_images` answer.
//!
//! The characters named by character id are looked up in one query; the rest of each answer
//! (a named LoRA's lookup, the file checks, the signed links) is resolved concurrently. The uses
//! of the LoRAs handed out are recorded afterwards in one transaction, once per generation.
//! Which answer each status gets is `loraforge_domain::handoff`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use loraforge_db::{EventDetail, UseRecord};
use loraforge_domain::handoff::{
    self, FallbackReason, MAX_CHARACTERS, MAX_REFERENCE_IMAGES, MAX_URL_CHARS, MissingFile, Verdict,
};
use loraforge_domain::keys::OutputKeys;
use loraforge_domain::{LoraId, LoraModel, RunResult, StatusEvent, TextRule, TrainingStatus, text};

use crate::auth::AuthUser;
use crate::body;
use crate::error::{ApiError, ApiResult, body_error, invalid_text};
use crate::state::AppState;
use crate::views::CreatorView;

/// The alert raised when a completed LoRA's file is missing (subject: the LoRA id).
pub const FILE_MISSING_ALERT: &str = "lora_file_missing";

const GENERATION_ID: TextRule = TextRule {
    field: "generation_id",
    ..TextRule::IDENTIFIER
};

/// Body of `POST /api/v1/generation/resolve`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The generation (at most 255 characters): each (generation, LoRA) counts as one use, so a
    /// retry with the same id is not counted again.
    #[schema(max_length = 255)]
    pub generation_id: String,
    /// 1–50 characters, answered in this order.
    pub characters: Vec<CharacterRequest>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CharacterRequest {
    /// The generator's character id (at most 255 characters).
    #[schema(max_length = 255)]
    pub character_id: String,
    /// The LoRA to use. Absent or null: the character's newest completed LoRA (anyone's).
    pub lora_id: Option<String>,
    /// The character's reference images (at most 50 URLs of at most 2048 characters), given
    /// back unchanged when the answer is `reference_images`.
    #[serde(default)]
    pub reference_images: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResolveResponse {
    pub generation_id: String,
    /// One answer per requested character, in the request's order.
    pub characters: Vec<CharacterAnswer>,
}

/// `mode` says which: `lora` (use the LoRA) or `reference_images` (use the images).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum CharacterAnswer {
    Lora(LoraAnswer),
    ReferenceImages(FallbackAnswer),
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoraAnswer {
    pub character_id: String,
    pub lora_id: Uuid,
    pub name: String,
    pub creator: CreatorView,
    pub trigger_words: Vec<String>,
    /// The weight to apply the LoRA at: 1.0 (the adapter's alpha/rank scaling is already in
    /// its config; see `loraforge_domain::handoff::recommended_scale`).
    pub recommended_scale: f64,
    /// Signed; valid until `download_url_expires_at`.
    pub download_url: String,
    pub download_url_expires_at: DateTime<Utc>,
    /// The same LoRA in kohya format, when that file exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kohya_download_url: Option<String>,
    /// Lowercase hex sha256 of the file at `download_url`.
    pub sha256: String,
    /// Always `diffusers` (PEFT safetensors).
    pub format: String,
    pub file_size: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FallbackAnswer {
    pub character_id: String,
    #[schema(value_type = String, example = "training")]
    pub reason: FallbackReason,
    /// Text to show people (PRD 1's notice while the LoRA trains), or null.
    pub notice: Option<String>,
    /// The LoRA named or found, if any (as sent for an unknown id).
    pub lora_id: Option<String>,
    #[schema(value_type = Option<String>, example = "training")]
    pub training_status: Option<TrainingStatus>,
    /// 0–100, when there is a LoRA.
    pub progress: Option<u8>,
    /// Seconds, when the trainer can estimate them.
    pub estimated_remaining: Option<u32>,
    /// The reference image URLs sent for this character, unchanged.
    pub reference_images: Vec<String>,
}

/// A checked character of the request.
struct Character {
    character_id: String,
    /// The id as sent (blank: none).
    lora_id: Option<String>,
    reference_images: Vec<String>,
}

/// Which LoRA to use for each character of a generation, or reference images and why not.
#[utoipa::path(post, path = "/api/v1/generation/resolve", request_body = ResolveRequest,
    tag = "generation", security(("bearer" = [])),
    responses((status = 200, body = ResolveResponse),
        (status = 400, description = "invalid_json, invalid_request (with `field`), invalid_generation_id or invalid_character_id", body = crate::views::ErrorBody),
        (status = 401, body = crate::views::ErrorBody),
        (status = 413, description = "payload_too_large", body = crate::views::ErrorBody)))]
pub async fn resolve(
    State(state): State<AppState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ResolveResponse>> {
    let body = body.map_err(body_error)?;
    let req: ResolveRequest = body::from_value(body::json_value(&body)?).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "{}; send {{\"generation_id\": \"…\", \"characters\": [{{\"character_id\": \"…\", \"lora_id\": \"…\", \"reference_images\": [\"https://…\"]}}]}}",
                e.message
            ),
        )
    })?;
    let (generation_id, characters) = check_request(req)?;
    let now = state.now();
    // The characters named without a LoRA: their newest completed LoRAs in one query.
    let by_character = newest_by_character(&state, &characters).await;
    let found = futures::future::join_all(
        characters
            .iter()
            .map(|c| lookup_character(&state, c, &by_character)),
    )
    .await;
    // Every file to check (each LoRA's model file and its kohya twin), in one call to the store.
    let keys: Vec<&str> = found
        .iter()
        .filter_map(|f| f.as_ref().ok())
        .flat_map(|(_, key, kohya)| std::iter::once(key.as_str()).chain(kohya.as_deref()))
        .collect();
    let mut heads = state.store().head_many(&keys).await.into_iter();
    let checks: Vec<_> = characters
        .iter()
        .zip(found)
        .map(|(c, f)| {
            f.map(|(lora, key, kohya)| {
                let model = heads.next();
                let kohya = kohya.map(|k| (k, heads.next()));
                (c, lora, key, model, kohya)
            })
        })
        .collect();
    let answers = futures::future::join_all(checks.into_iter().map(|check| async {
        match check {
            Err(answer) => (*answer, None),
            Ok((c, lora, key, model, kohya)) => {
                let model = model.unwrap_or_else(|| Err(missing_head()));
                let kohya = kohya.map(|(k, h)| (k, h.unwrap_or_else(|| Err(missing_head()))));
                resolve_file(&state, c, lora, &key, model, kohya, now).await
            }
        }
    }))
    .await;
    let handed: Vec<LoraId> = answers.iter().filter_map(|(_, l)| *l).collect();
    if !handed.is_empty()
        && let Err(e) = state
            .usage()
            .record(UseRecord {
                generation_id: generation_id.clone(),
                loras: handed,
                user: user.id,
                at: now,
            })
            .await
    {
        // Bookkeeping only: the generation still gets its LoRAs.
        tracing::warn!(error = %e, %generation_id, "recording the LoRA uses failed or is late");
    }
    Ok(Json(ResolveResponse {
        generation_id,
        characters: answers.into_iter().map(|(a, _)| a).collect(),
    }))
}

/// The request's ids cleaned and its limits checked.
fn check_request(req: ResolveRequest) -> ApiResult<(String, Vec<Character>)> {
    let generation_id = text::clean(&req.generation_id, &GENERATION_ID)
        .map_err(|e| invalid_text("invalid_generation_id", &e))?;
    let n = req.characters.len();
    if n == 0 || n > MAX_CHARACTERS {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("characters must hold 1 to {MAX_CHARACTERS} characters, not {n}"),
        )
        .with("field", "characters"));
    }
    let characters = req
        .characters
        .into_iter()
        .map(|c| {
            let character_id = text::clean(&c.character_id, &TextRule::IDENTIFIER)
                .map_err(|e| invalid_text("invalid_character_id", &e))?;
            let images = c.reference_images.len();
            if images > MAX_REFERENCE_IMAGES {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!(
                        "character {character_id} has {images} reference_images; at most {MAX_REFERENCE_IMAGES} are allowed"
                    ),
                )
                .with("field", "reference_images"));
            }
            if let Some(url) = c
                .reference_images
                .iter()
                .find(|u| u.is_empty() || u.chars().count() > MAX_URL_CHARS)
            {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!(
                        "character {character_id}: each reference image URL must be 1 to {MAX_URL_CHARS} characters, not {}",
                        url.chars().count()
                    ),
                )
                .with("field", "reference_images"));
            }
            Ok(Character {
                character_id,
                lora_id: c.lora_id.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
                reference_images: c.reference_images,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok((generation_id, characters))
}

/// The newest completed LoRA of each character named without a LoRA id, by character id;
/// `Err` (logged) when the store could not answer.
async fn newest_by_character(
    state: &AppState,
    characters: &[Character],
) -> Result<HashMap<String, LoraModel>, ()> {
    let mut ids: Vec<String> = characters
        .iter()
        .filter(|c| c.lora_id.is_none())
        .map(|c| c.character_id.clone())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    match state.repo().newest_completed_of_characters(&ids).await {
        Ok(loras) => Ok(loras
            .into_iter()
            .filter_map(|l| Some((l.character_id.clone()?, l)))
            .collect()),
        Err(e) => {
            tracing::warn!(error = %e, "looking up the characters' LoRAs failed; falling back to reference images");
            Err(())
        }
    }
}

/// A reference-images answer for `c`, about `lora` when there is one.
fn fallback(c: &Character, reason: FallbackReason, lora: Option<&LoraModel>) -> CharacterAnswer {
    CharacterAnswer::ReferenceImages(FallbackAnswer {
        character_id: c.character_id.clone(),
        reason,
        notice: reason.notice().map(str::to_owned),
        lora_id: lora.map(|l| l.id.to_string()).or_else(|| c.lora_id.clone()),
        training_status: lora.map(|l| l.status),
        progress: lora.map(|l| l.progress.percent),
        estimated_remaining: lora.and_then(|l| l.progress.estimated_remaining),
        reference_images: c.reference_images.clone(),
    })
}

/// A character's LoRA, when it is one to hand out: the LoRA, its model file's key and the key
/// of its kohya twin (the files still to check); otherwise its reference-images answer.
async fn lookup_character(
    state: &AppState,
    c: &Character,
    by_character: &Result<HashMap<String, LoraModel>, ()>,
) -> Result<(LoraModel, String, Option<String>), Box<CharacterAnswer>> {
    let found = match &c.lora_id {
        // No LoRA can have an id that is not a UUID: unknown, like any other.
        Some(id) => match id.parse::<LoraId>() {
            Ok(id) => state.repo().get_lora(id).await,
            Err(_) => Ok(None),
        },
        None => match by_character {
            Ok(found) => Ok(found.get(&c.character_id).cloned()),
            // Logged once in `newest_by_character`.
            Err(()) => {
                return Err(Box::new(fallback(
                    c,
                    FallbackReason::StorageUnavailable,
                    None,
                )));
            }
        },
    };
    let lora = match found {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, character_id = %c.character_id, "LoRA lookup failed; falling back to reference images");
            return Err(Box::new(fallback(
                c,
                FallbackReason::StorageUnavailable,
                None,
            )));
        }
    };
    let storage_key = match handoff::verdict(lora.as_ref(), c.lora_id.is_some()) {
        Verdict::Fallback(reason) => return Err(Box::new(fallback(c, reason, lora.as_ref()))),
        Verdict::CheckFile { storage_key } => storage_key,
    };
    let Some(lora) = lora else {
        return Err(Box::new(fallback(c, FallbackReason::NotFound, None)));
    };
    let kohya = OutputKeys::kohya_of(&storage_key);
    Ok((lora, storage_key, kohya))
}

/// What the store said of a file.
type Head = loraforge_storage::Result<Option<loraforge_storage::BlobMeta>>;

/// A head the store did not answer (it answers one per key; never expected).
fn missing_head() -> loraforge_storage::StorageError {
    loraforge_storage::StorageError::Config("the store gave fewer answers than files asked".into())
}

/// One character's answer once its files were looked at, and the LoRA it hands out (to count
/// as a use).
async fn resolve_file(
    state: &AppState,
    c: &Character,
    lora: LoraModel,
    key: &str,
    model: Head,
    kohya: Option<(String, Head)>,
    now: DateTime<Utc>,
) -> (CharacterAnswer, Option<LoraId>) {
    match hand_out(state, &lora, key, model, kohya, &c.character_id, now).await {
        Ok(answer) => (CharacterAnswer::Lora(answer), Some(lora.id)),
        Err(Problem::Missing) => {
            let lora = file_missing(state, lora, now).await;
            (fallback(c, FallbackReason::FileMissing, Some(&lora)), None)
        }
        Err(Problem::Store(e)) => {
            tracing::warn!(error = %e, lora_id = %lora.id, "blob store error while resolving; falling back to reference images");
            (
                fallback(c, FallbackReason::StorageUnavailable, Some(&lora)),
                None,
            )
        }
    }
}

/// Why a completed LoRA could not be handed out.
enum Problem {
    /// The model file is not in the store.
    Missing,
    /// The store (or recording the hash) errored.
    Store(String),
}

impl From<loraforge_storage::StorageError> for Problem {
    fn from(e: loraforge_storage::StorageError) -> Self {
        if e.is_not_found() {
            Problem::Missing
        } else {
            Problem::Store(e.to_string())
        }
    }
}

/// Given what the store said of the file (and its kohya twin), signs the links and finds the
/// sha256.
async fn hand_out(
    state: &AppState,
    lora: &LoraModel,
    key: &str,
    model: Head,
    kohya: Option<(String, Head)>,
    character_id: &str,
    now: DateTime<Utc>,
) -> Result<LoraAnswer, Problem> {
    let store = state.store();
    let meta = model?.ok_or(Problem::Missing)?;
    if lora.file_missing_since.is_some()
        && let Err(e) = state.repo().clear_file_missing(lora.id).await
    {
        tracing::warn!(error = %e, lora_id = %lora.id, "clearing an earlier file miss failed");
    }
    let sha256 = sha256_of(state, lora, key, meta.size).await?;
    let ttl = state.settings().download_url_ttl;
    let download_url = store.signed_get_url(key, ttl, now).await?.to_string();
    // A kohya twin that errors is left out rather than failing the hand-out.
    let kohya_download_url = match kohya {
        Some((k, Ok(Some(_)))) => Some(store.signed_get_url(&k, ttl, now).await?.to_string()),
        _ => None,
    };
    Ok(LoraAnswer {
        character_id: character_id.to_owned(),
        lora_id: lora.id.0,
        name: lora.name.clone(),
        creator: CreatorView::of(&lora.creator, state.settings().show_creator_emails),
        trigger_words: lora.params.trigger_words.clone(),
        recommended_scale: handoff::recommended_scale(&lora.params),
        download_url,
        download_url_expires_at: now
            + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1)),
        kohya_download_url,
        sha256,
        format: "diffusers".to_owned(),
        file_size: meta.size,
    })
}

/// The model file's sha256: as recorded (at publish, `engine::AfterTraining`), else — for LoRAs
/// published before the hash was recorded there — from the run that trained it (what the worker
/// hashed before uploading, when its size matches the stored file), else hashed from the blob
/// once. Either way it is recorded, so each LoRA is hashed at most once.
async fn sha256_of(
    state: &AppState,
    lora: &LoraModel,
    key: &str,
    size: u64,
) -> Result<String, Problem> {
    if let Some(sha) = &lora.sha256 {
        return Ok(sha.clone());
    }
    let from_run = match state.repo().runs_of(lora.id).await {
        Ok(runs) => runs
            .iter()
            .rev()
            .filter_map(|r| r.result.clone())
            .filter_map(|v| serde_json::from_value::<RunResult>(v).ok())
            .find_map(|r| handoff::reported_sha256(&r.model, size).map(str::to_owned)),
        Err(e) => {
            tracing::warn!(error = %e, lora_id = %lora.id, "reading the runs failed; hashing the file");
            None
        }
    };
    let sha = match from_run {
        Some(sha) => sha,
        None => {
            let bytes = state.store().get(key).await?;
            tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&bytes)))
                .await
                .map_err(|e| Problem::Store(format!("hashing the file: {e}")))?
        }
    };
    if let Err(e) = state.repo().record_sha256(lora.id, &sha).await {
        tracing::warn!(error = %e, lora_id = %lora.id, "recording the sha256 failed");
    }
    Ok(sha)
}

/// Scenario 8: a completed LoRA's file is not in the store. Alerts the operator (deduplicated
/// by the alerts' cooldown), remembers the first miss, and fails the LoRA once the file has been
/// missing on two checks at least `MISSING_FOR_GOOD_AFTER` apart, giving its owner back what it
/// cost them as for any failed training. Returns the LoRA as it is now.
async fn file_missing(state: &AppState, lora: LoraModel, now: DateTime<Utc>) -> LoraModel {
    let repo = state.repo();
    let first = match repo.note_file_missing(lora.id, now).await {
        Ok(first) => first,
        Err(e) => {
            tracing::warn!(error = %e, lora_id = %lora.id, "recording a missing file failed");
            now
        }
    };
    tracing::error!(lora_id = %lora.id, key = ?lora.storage_key, missing_since = %first, "a completed LoRA's file is missing from storage");
    let message = format!(
        "the file of completed LoRA {} ({}) is missing from storage (first found missing {}); generations fall back to reference images",
        lora.id,
        lora.name,
        first.to_rfc3339()
    );
    if let Err(e) = repo
        .record_alert(FILE_MISSING_ALERT, &lora.id.to_string(), &message, now)
        .await
    {
        tracing::warn!(error = %e, lora_id = %lora.id, "raising the missing-file alert failed");
    }
    if handoff::missing_file(first, now) != MissingFile::GoneForGood {
        return lora;
    }
    let detail = EventDetail::because(handoff::FILE_GONE_ERROR);
    match repo
        .apply_event(lora.id, StatusEvent::FileLost, detail, now)
        .await
    {
        Ok(failed) => {
            state.notify_changed(failed.id);
            tracing::warn!(lora_id = %failed.id, "LoRA failed: its file is gone from storage");
            // A failed LoRA costs its owner nothing: the charge goes back (or the reservation,
            // if it was not charged yet), once, whoever else settles it. Failed LoRAs leave the
            // monthly count by their status.
            crate::credits::settle_lora(repo, &failed, now).await;
            failed
        }
        // A concurrent resolve failed it first (or it changed meanwhile): answer what we have.
        Err(e) => {
            tracing::info!(error = %e, lora_id = %lora.id, "marking the LoRA failed did not apply");
            repo.get_lora(lora.id).await.ok().flatten().unwrap_or(lora)
        }
    }
}
