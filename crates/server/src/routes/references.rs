//! `POST /api/v1/lora-models/from-references`: the job-triggered path of PRD 1. A generator
//! sends `ReferenceImages` — image URLs tagged with the character they show — and gets one
//! dataset and one LoRA per character with enough images. Characters with too few images, or
//! whose images fail to download or fail the checks, are reported in `warnings` and do not
//! stop the others. Datasets go through the one dataset path and LoRAs through the one create
//! path, so every check and limit of the direct routes applies.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use loraforge_db::{DbError, IdempotencyKey};
use loraforge_domain::{LoraName, MonthlyWindow, ParamsInput, TextRule, TrainingStatus, text};

use crate::auth::AuthUser;
use crate::body;
use crate::create::{CreateLora, Created, create_lora, monthly_limit_reached};
use crate::downloads::{self, UrlImage, download_all};
use crate::error::{ApiError, ApiResult, body_error, invalid_text};
use crate::intake::{IntakeError, store_dataset};
use crate::quota::check_dataset_quota;
use crate::routes::lora_models::{
    JOB_ID, check_params, idempotency_header, params_body_error, parse_description,
    parse_identifier,
};
use crate::state::AppState;

/// References per request, across all characters.
const MAX_REFERENCES: usize = 500;

/// Body of `POST /api/v1/lora-models/from-references`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FromReferencesRequest {
    pub character_references: Vec<CharacterReference>,
    /// Training parameters for every LoRA; anything left out takes the default.
    pub params: Option<ParamsInput>,
    pub description: Option<String>,
    /// A webhook for every LoRA created (as on `POST /api/v1/lora-models`).
    #[schema(max_length = 2048)]
    pub webhook: Option<String>,
    /// Which events to send: start, progress, completed, failed, cancelled. Absent: all.
    pub webhook_events_filter: Option<Vec<String>>,
    /// The video generation job that sent these references (at most 255 characters; `job_id`
    /// is accepted too): kept on every LoRA created, and filterable in the library.
    #[serde(alias = "job_id")]
    #[schema(max_length = 255)]
    pub triggered_by_job_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CharacterReference {
    pub character_id: String,
    /// http(s) URL on a host the server allows (`image_url_allowed_hosts`).
    pub image_url: String,
    /// The LoRA's name; the character id when absent.
    pub character_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CharacterLoraView {
    pub character_id: String,
    pub lora_id: Uuid,
    pub dataset_id: Uuid,
    #[schema(value_type = String, example = "pending")]
    pub status: TrainingStatus,
}

/// A character that got no LoRA, and why.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CharacterWarning {
    pub character_id: String,
    /// `too_few_images`, `too_many_images`, `download_failed`, `invalid_dataset`, `invalid_name`,
    /// or the code of the create error (`duplicate_name`, `monthly_limit_reached`, …).
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FromReferencesResponse {
    pub loras: Vec<CharacterLoraView>,
    pub warnings: Vec<CharacterWarning>,
}

/// One dataset and one LoRA per character of a `ReferenceImages` payload.
#[utoipa::path(post, path = "/api/v1/lora-models/from-references", request_body = FromReferencesRequest,
    tag = "library", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "retrying with the same key returns the first LoRAs")),
    responses((status = 202, body = FromReferencesResponse), (status = 400, body = crate::views::ErrorBody),
        (status = 403, description = "url_intake_disabled", body = crate::views::ErrorBody),
        (status = 409, description = "duplicate_name (when no character got a LoRA)", body = crate::views::ErrorBody),
        (status = 413, description = "payload_too_large", body = crate::views::ErrorBody),
        (status = 422, description = "invalid_webhook (with `field`), idempotency_key_reused, invalid_dataset, base_model_not_allowed (with `allowed`), or incompatible_params (with `field`)", body = crate::views::ErrorBody),
        (status = 429, description = "rate_limited, monthly_limit_reached or dataset_quota_reached", body = crate::views::ErrorBody)))]
pub async fn from_references(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<FromReferencesResponse>)> {
    let body = body.map_err(body_error)?;
    let req: FromReferencesRequest = body::from_value(body::json_value(&body)?).map_err(|e| {
        if e.top_field() == Some("params") {
            return params_body_error(&state, &e);
        }
        ApiError::bad_request(
            "invalid_json",
            format!("{}; send {{\"character_references\": [{{\"character_id\": \"…\", \"image_url\": \"https://…\"}}]}}", e.message),
        )
    })?;
    let refs = req.character_references;
    if refs.is_empty() || refs.len() > MAX_REFERENCES {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "character_references must hold 1 to {MAX_REFERENCES} references, not {}",
                refs.len()
            ),
        ));
    }
    // Ids are grouped in their clean form, so "Ｃａｔ" and "Cat" are one character.
    let refs = refs
        .into_iter()
        .map(|mut r| {
            r.character_id = text::clean(&r.character_id, &TextRule::IDENTIFIER)
                .map_err(|e| invalid_text("invalid_request", &e))?;
            Ok(r)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let description = parse_description(req.description.as_deref())?;
    let triggered_by_job_id = parse_identifier(req.triggered_by_job_id.as_deref(), &JOB_ID)?;
    let params = check_params(&state, req.params.as_ref())?;
    let webhook = crate::client_webhooks::parse_webhook(
        &state,
        req.webhook.as_deref(),
        req.webhook_events_filter.as_deref(),
    )
    .await?;
    let idempotency = idempotency_header(&headers)?;
    let fetcher = downloads::fetcher(&state)?;

    let rules = state.settings().dataset_rules.clone();
    let mut loras = Vec::new();
    let mut warnings = Vec::new();
    let warn = |w: &mut Vec<CharacterWarning>, id: &str, code: &str, message: String| {
        w.push(CharacterWarning {
            character_id: id.to_owned(),
            code: code.to_owned(),
            message,
        });
    };
    let groups = group_by_character(refs);

    // Replays first: a character whose create this key already made answers that LoRA, and a
    // key used with another request answers 422 — both before anything is downloaded or stored.
    let mut replayed = vec![false; groups.len()];
    if let Some(k) = &idempotency {
        for (i, group) in groups.iter().enumerate() {
            let n = group.refs.len();
            if n < rules.min_images || n > rules.max_images {
                continue;
            }
            let name_raw = group
                .name
                .clone()
                .unwrap_or_else(|| group.character_id.clone());
            let key = character_key(k, group, &name_raw, &description, req.params.as_ref());
            if let Some(prior) = state.repo().idempotent_lora(user.id, &key.key).await? {
                if prior.request_hash != key.request_hash {
                    return Err(DbError::IdempotencyKeyReused.into());
                }
                loras.push(CharacterLoraView {
                    character_id: group.character_id.clone(),
                    lora_id: prior.lora.id.0,
                    dataset_id: prior.lora.dataset_id.0,
                    status: prior.lora.status,
                });
                replayed[i] = true;
            }
        }
    }

    // Nothing is downloaded or stored for a user who cannot create anything this month or store
    // any dataset today; replays above are answered all the same.
    let work = groups
        .iter()
        .zip(&replayed)
        .any(|(g, r)| !r && (rules.min_images..=rules.max_images).contains(&g.refs.len()));
    if work {
        let now = state.now();
        let window = MonthlyWindow::containing(now);
        let limit = state.settings().limits.monthly_loras;
        let refusal = match state.repo().count_monthly(user.id, window).await {
            Ok(used) if used >= limit => Some(monthly_limit_reached(window, now, used, limit)),
            Ok(_) => check_dataset_quota(&state, user.id).await.err(),
            // The create re-checks under its lock; a failing count only skips this shortcut.
            Err(e) => {
                tracing::warn!(error = %e, "monthly count failed; the creates will check again");
                check_dataset_quota(&state, user.id).await.err()
            }
        };
        if let Some(e) = refusal {
            if loras.is_empty() {
                return Err(e);
            }
            for (g, r) in groups.iter().zip(&replayed) {
                if !r {
                    let msg = format!("character {} was skipped: {}", g.character_id, e.message);
                    warn(&mut warnings, &g.character_id, e.code, msg);
                }
            }
            return Ok((
                StatusCode::ACCEPTED,
                Json(FromReferencesResponse { loras, warnings }),
            ));
        }
    }

    let mut first_create_error: Option<ApiError> = None;
    for (group, replayed) in groups.into_iter().zip(replayed) {
        if replayed {
            continue;
        }
        let id = group.character_id.as_str();
        let n = group.refs.len();
        if n < rules.min_images {
            let msg = format!(
                "character {id} has {n} reference image{}; at least {} are needed — skipped",
                if n == 1 { "" } else { "s" },
                rules.min_images
            );
            warn(&mut warnings, id, "too_few_images", msg);
            continue;
        }
        if n > rules.max_images {
            let msg = format!(
                "character {id} has {n} reference images; at most {} are allowed — skipped",
                rules.max_images
            );
            warn(&mut warnings, id, "too_many_images", msg);
            continue;
        }
        let name_raw = group.name.clone().unwrap_or_else(|| id.to_owned());
        let name = match LoraName::parse(&name_raw) {
            Ok(n) => n,
            Err(e) => {
                warn(
                    &mut warnings,
                    id,
                    "invalid_name",
                    format!("character {id} was skipped: {e}"),
                );
                continue;
            }
        };
        let urls: Vec<UrlImage> = group
            .refs
            .iter()
            .map(|r| UrlImage {
                url: r.image_url.clone(),
                caption: None,
            })
            .collect();
        let images = match download_all(&state, fetcher, urls).await {
            Ok(images) => images,
            Err(failures) => {
                let reasons: Vec<String> = failures
                    .outcomes
                    .iter()
                    .filter_map(|(_, e)| e.as_ref().map(ToString::to_string))
                    .collect();
                if failures
                    .outcomes
                    .iter()
                    .any(|(_, e)| e.as_ref().is_some_and(|e| e.is_internal()))
                {
                    return Err(failures.into());
                }
                warn(
                    &mut warnings,
                    id,
                    "download_failed",
                    format!(
                        "character {id} was skipped: {}",
                        crate::error::list_problems(&reasons)
                    ),
                );
                continue;
            }
        };
        let stored = match store_dataset(&state, user.id, images).await {
            Ok(s) => s,
            Err(IntakeError::Rejected(report)) => {
                let mut reasons: Vec<String> =
                    report.errors.iter().map(|p| p.message.clone()).collect();
                reasons.extend(
                    report
                        .images
                        .iter()
                        .flat_map(|i| i.errors.iter().map(|p| p.message.clone())),
                );
                warn(
                    &mut warnings,
                    id,
                    "invalid_dataset",
                    format!(
                        "character {id} was skipped; its images failed the checks: {}",
                        crate::error::list_problems(&reasons)
                    ),
                );
                continue;
            }
            // The daily quota ran out part-way: the rest are skipped, said per character.
            Err(e @ IntakeError::QuotaReached { .. }) => {
                let e = ApiError::from(e);
                let msg = format!("character {id} was skipped: {}", e.message);
                warn(&mut warnings, id, e.code, msg);
                first_create_error.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let dataset_id = stored.dataset.id;
        let key = idempotency
            .as_ref()
            .map(|k| character_key(k, &group, &name_raw, &description, req.params.as_ref()));
        let input = CreateLora {
            name,
            description: description.clone(),
            dataset_id,
            params: params.clone(),
            idempotency: key,
            webhook: webhook.clone(),
            character_id: Some(id.to_owned()),
            triggered_by_job_id: triggered_by_job_id.clone(),
        };
        match create_lora(&state, &user, input).await {
            Ok(Created { lora, .. }) => loras.push(CharacterLoraView {
                character_id: id.to_owned(),
                lora_id: lora.id.0,
                dataset_id: lora.dataset_id.0,
                status: lora.status,
            }),
            Err(e) if e.status.is_client_error() => {
                let msg = format!(
                    "character {id}: its dataset {dataset_id} was stored but the LoRA was not created: {} (create it later with POST /api/v1/lora-models)",
                    e.message
                );
                warn(&mut warnings, id, e.code, msg);
                first_create_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    // When every create was refused (e.g. the monthly limit), say so with the refusal itself.
    if loras.is_empty()
        && let Some(e) = first_create_error
    {
        return Err(e.with("warnings", json!(warnings)));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(FromReferencesResponse { loras, warnings }),
    ))
}

struct CharacterGroup {
    character_id: String,
    name: Option<String>,
    refs: Vec<CharacterReference>,
}

/// Groups references by `character_id`, in order of first appearance; the name is the first
/// non-blank `character_name` of the group.
fn group_by_character(refs: Vec<CharacterReference>) -> Vec<CharacterGroup> {
    let mut groups: Vec<CharacterGroup> = Vec::new();
    for r in refs {
        let id = r.character_id.trim().to_owned();
        let idx = match groups.iter().position(|g| g.character_id == id) {
            Some(i) => i,
            None => {
                groups.push(CharacterGroup {
                    character_id: id,
                    name: None,
                    refs: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[idx];
        if g.name.is_none() {
            g.name = r
                .character_name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned);
        }
        g.refs.push(r);
    }
    groups
}

/// The idempotency key of one character's create: the request's key plus the character, with
/// a hash of what defines that character's LoRA (so a changed request is detected per character).
fn character_key(
    key: &str,
    g: &CharacterGroup,
    name: &str,
    description: &Option<String>,
    params: Option<&ParamsInput>,
) -> IdempotencyKey {
    let id_hash = hex::encode(Sha256::digest(g.character_id.as_bytes()));
    let canonical = json!({
        "character_id": g.character_id,
        "name": name,
        "image_urls": g.refs.iter().map(|r| r.image_url.as_str()).collect::<Vec<_>>(),
        "description": description,
        "params": params,
    });
    IdempotencyKey {
        key: format!(
            "{}#{}",
            key.chars().take(200).collect::<String>(),
            &id_hash[..16]
        ),
        request_hash: hex::encode(Sha256::digest(
            serde_json::to_vec(&canonical).unwrap_or_default(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, url: &str, name: Option<&str>) -> CharacterReference {
        CharacterReference {
            character_id: id.into(),
            image_url: url.into(),
            character_name: name.map(Into::into),
        }
    }

    #[test]
    fn references_group_by_character_in_first_seen_order() {
        let groups = group_by_character(vec![
            r("b", "u1", None),
            r("a", "u2", Some("  ")),
            r(" b ", "u3", Some("Bea")),
            r("a", "u4", Some("Ann")),
            r("b", "u5", Some("Other")),
        ]);
        let summary: Vec<_> = groups
            .iter()
            .map(|g| {
                (
                    g.character_id.as_str(),
                    g.name.as_deref(),
                    g.refs
                        .iter()
                        .map(|r| r.image_url.as_str())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("b", Some("Bea"), vec!["u1", "u3", "u5"]),
                ("a", Some("Ann"), vec!["u2", "u4"])
            ]
        );
    }
}
