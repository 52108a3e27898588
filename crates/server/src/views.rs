//! What the API shows: JSON views of domain records, separate from the domain types so the wire
//! format is explicit and documented in the OpenAPI schema.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use loraforge_domain::validation::REQUIRED_PASSING;
use loraforge_domain::{
    CreatorRef, Hidden, LoraModel, LoraSummary, MicroUsd, TrainingRun, TrainingStatus,
};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatorView {
    pub id: Uuid,
    /// The name to show ("Cyberpunk Girl by Ann"): the one the creator chose
    /// (`PATCH /api/v1/me`), else one derived without revealing their e-mail (`j***@e***.com`).
    pub display_name: String,
    /// The creator's e-mail: only to the creator themselves and admins, or to everyone where the
    /// operator opted in (`LORAFORGE_SHOW_CREATOR_EMAILS`); null otherwise.
    pub email: Option<String>,
}

impl CreatorView {
    /// `show_email`: the viewer may see the address (see [`CreatorView::email`]).
    pub fn of(c: &CreatorRef, show_email: bool) -> Self {
        Self {
            id: c.id.0,
            display_name: c.public_name(),
            email: c.email.clone().filter(|_| show_email),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoraListItem {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = String, example = "completed")]
    pub training_status: TrainingStatus,
    pub created_at: DateTime<Utc>,
    pub creator: CreatorView,
    pub usage_count: u64,
    /// The generator's character this LoRA was trained for.
    pub character_id: Option<String>,
    /// The generation job that asked for it.
    pub triggered_by_job_id: Option<String>,
    /// Set when an admin hid it; listed only to its owner (`creator` = their id) and to admins
    /// (`include_hidden=true`). Absent when visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<HiddenView>,
}

/// Why and since when an admin hid a LoRA (its owner and admins see this).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HiddenView {
    pub at: DateTime<Utc>,
    /// The admin's reason, for the owner.
    pub reason: String,
}

impl From<&Hidden> for HiddenView {
    fn from(h: &Hidden) -> Self {
        Self {
            at: h.at,
            reason: h.reason.clone(),
        }
    }
}

impl LoraListItem {
    /// `show_email`: the operator's `show_creator_emails` (a listing is shared by every viewer).
    pub fn of(s: &LoraSummary, show_email: bool) -> Self {
        Self {
            id: s.id.0,
            name: s.name.clone(),
            description: s.description.clone(),
            training_status: s.status,
            created_at: s.created_at,
            creator: CreatorView::of(&s.creator, show_email),
            usage_count: s.usage_count,
            character_id: s.character_id.clone(),
            triggered_by_job_id: s.triggered_by_job_id.clone(),
            hidden: s.hidden.as_ref().map(HiddenView::from),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoraList {
    pub items: Vec<LoraListItem>,
    /// Every LoRA selected; for a `search`, exact only up to 1,000 matches: past that this is
    /// 1000 and `total_exact` is false ("1,000 or more").
    pub total: u64,
    /// False when `total` is the search's count cap (a lower bound), true when it is exact.
    pub total_exact: bool,
    pub limit: u32,
    pub offset: u64,
}

impl LoraList {
    /// The JSON of a list whose items are serialized already (each one [`LoraListItem`]'s
    /// JSON): byte for byte what serializing the `LoraList` gives (tested below).
    pub fn json_of_serialized_items(
        items: &[impl AsRef<[u8]>],
        total: u64,
        total_exact: bool,
        limit: u32,
        offset: u64,
    ) -> Vec<u8> {
        let size: usize = items.iter().map(|i| i.as_ref().len() + 1).sum();
        let mut out = Vec::with_capacity(size + 96);
        out.extend_from_slice(b"{\"items\":[");
        for (n, item) in items.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item.as_ref());
        }
        out.extend_from_slice(
            format!(
                "],\"total\":{total},\"total_exact\":{total_exact},\"limit\":{limit},\"offset\":{offset}}}"
            )
            .as_bytes(),
        );
        out
    }
}

/// Live status, for polling.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    pub id: Uuid,
    #[schema(value_type = String, example = "training")]
    pub training_status: TrainingStatus,
    /// What the job is doing now ("queued", "training", "validating", …).
    pub stage: Option<String>,
    /// 0–100.
    pub progress: u8,
    /// Seconds, when known.
    pub estimated_remaining: Option<u32>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Why it is where it is when that is not an error, e.g. "waiting for a GPU: …".
    pub status_message: Option<String>,
}

impl From<&LoraModel> for StatusView {
    fn from(l: &LoraModel) -> Self {
        Self {
            id: l.id.0,
            training_status: l.status,
            stage: l.progress.stage.clone(),
            progress: if l.status == TrainingStatus::Completed {
                100
            } else {
                l.progress.percent.min(100)
            },
            estimated_remaining: l.progress.estimated_remaining,
            error: l.error.clone(),
            status_message: l.status_message.clone(),
        }
    }
}

/// An amount of money: exact integer micro-dollars, and the same for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MoneyView {
    /// Millionths of a US dollar.
    pub micro_usd: i64,
    /// E.g. "$0.42".
    pub display: String,
}

impl From<MicroUsd> for MoneyView {
    fn from(m: MicroUsd) -> Self {
        Self {
            micro_usd: m.micros(),
            display: m.to_string(),
        }
    }
}

/// One attempt at training a LoRA, as its owner sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    /// 1, 2, …
    pub attempt: u32,
    /// Where it ran: `local`, `runpod`, …
    pub backend: String,
    /// Why the router chose that backend ("runpod: first in order", "local; fallback after
    /// runpod: circuit breaker open; …"); null for runs older than routing records.
    pub route_reason: Option<String>,
    pub gpu_type: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// How it ended (a code of docs/worker-protocol.md), once it has.
    pub outcome: Option<String>,
    /// The same for people.
    pub message: Option<String>,
    /// What it cost, once its instance is confirmed gone.
    pub cost: Option<MoneyView>,
}

impl From<&TrainingRun> for AttemptView {
    fn from(r: &TrainingRun) -> Self {
        Self {
            attempt: r.attempt,
            backend: r.backend.clone(),
            route_reason: r.route_reason.clone(),
            gpu_type: r.gpu_type.clone(),
            started_at: r.started_at,
            ended_at: r.ended_at,
            outcome: r.outcome.clone(),
            message: r.message(),
            cost: r.cost.map(MoneyView::from),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReferenceImageView {
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    /// Signed, expiring URL; only the owner sees reference images.
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetRefView {
    pub id: Uuid,
    pub image_count: usize,
}

/// PRD 2's quality check of a trained LoRA: its validation images, each with the scoring
/// model's similarity score, and the verdict.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ValidationView {
    /// The verdict: true passed (or approved in review), false failed (or rejected), null not
    /// decided yet (training, or waiting for an admin's review).
    pub passed: Option<bool>,
    /// The lowest similarity an image needed to count, as the rule used it when it judged this
    /// LoRA (the setting may have changed since); null when no scoring model judged it.
    pub threshold: Option<f64>,
    /// How many validation images must reach `threshold` (2 of the 3).
    pub required_passing: u32,
    /// Each validation image in order, with its score.
    pub images: Vec<ValidationImageView>,
    /// Signed URLs of the validation images still kept (`images[].url` without the nulls), for
    /// older clients; the images are kept 30 days, after which none are listed.
    pub image_urls: Vec<String>,
}

/// One validation image and how it scored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ValidationImageView {
    /// 0, 1, 2: the image's place (the trainer's prompt and seed order).
    pub index: u32,
    /// Signed, expiring URL; null once the image is past its 30 days.
    pub url: Option<String>,
    /// The scoring model's similarity to the training images (mean cosine of CLIP image
    /// embeddings); null without a scoring model.
    pub score: Option<f64>,
    /// `score` ≥ `threshold`; null without a score.
    pub passed: Option<bool>,
}

impl ValidationView {
    /// `urls`: each validation image's signed URL in order, `None` where it is no longer kept.
    pub fn of(lora: &LoraModel, urls: Vec<Option<String>>) -> Self {
        let scores = lora.validation_scores.as_ref();
        let count = urls.len().max(scores.map_or(0, |s| s.scores.len()));
        let images = (0..count)
            .map(|i| ValidationImageView {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                url: urls.get(i).cloned().flatten(),
                score: scores.and_then(|s| s.scores.get(i).copied()),
                passed: scores.and_then(|s| s.passed(i)),
            })
            .collect();
        Self {
            passed: lora.validation_passed,
            threshold: scores.map(|s| s.threshold),
            required_passing: u32::try_from(REQUIRED_PASSING).unwrap_or(u32::MAX),
            images,
            image_urls: urls.into_iter().flatten().collect(),
        }
    }
}

/// Everything about one LoRA.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoraDetails {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = String, example = "completed")]
    pub training_status: TrainingStatus,
    pub stage: Option<String>,
    pub progress: u8,
    pub estimated_remaining: Option<u32>,
    pub error: Option<String>,
    pub creator: CreatorView,
    pub usage_count: u64,
    /// Training parameters as used (defaults filled in).
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub dataset: DatasetRefView,
    pub reference_images: Vec<ReferenceImageView>,
    pub validation: ValidationView,
    pub file_size: Option<u64>,
    /// Signed download URL of `model.safetensors` (diffusers/PEFT keys), once completed.
    pub download_url: Option<String>,
    /// Signed download URL of the same LoRA with kohya-ss keys (ComfyUI, A1111, Forge), once
    /// completed.
    pub kohya_download_url: Option<String>,
    pub download_url_expires_at: Option<DateTime<Utc>>,
    /// The sum of its attempts' costs.
    pub training_cost: MoneyView,
    /// Its training attempts, oldest first; shown to its owner only (empty for others).
    pub attempts: Vec<AttemptView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The generator's character this LoRA was trained for.
    pub character_id: Option<String>,
    /// The generation job that asked for it.
    pub triggered_by_job_id: Option<String>,
    /// Set when an admin hid it (only its owner and admins can see a hidden LoRA). Absent when
    /// visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<HiddenView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateLoraResponse {
    pub lora_id: Uuid,
    #[schema(value_type = String, example = "pending")]
    pub status: TrainingStatus,
    pub message: String,
}

/// Your own account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeView {
    pub id: Uuid,
    /// Your e-mail as your token carries it (only you see it).
    pub email: Option<String>,
    /// The name the library shows for you.
    pub display_name: String,
    /// Whether `display_name` is one you chose (false: derived from your account).
    pub display_name_chosen: bool,
}

/// Today's dataset quota (UTC day).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetQuotaView {
    pub datasets_used: u32,
    pub datasets_limit: u32,
    pub bytes_used: u64,
    pub bytes_limit: u64,
    /// The next midnight UTC.
    pub resets_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LimitsView {
    /// LoRAs counted this month (pending, queued, training, validating, completed).
    pub used: u32,
    pub limit: u32,
    pub remaining: u32,
    /// First instant of next month, UTC.
    pub resets_at: DateTime<Utc>,
    pub concurrent_jobs: u32,
    pub creates_per_minute: u32,
    /// Datasets you may still store today.
    pub datasets: DatasetQuotaView,
}

/// The error envelope every failure uses.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `duplicate_name`.
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraforge_domain::{CreatorRef, LoraId, LoraSummary, TrainingStatus, UserId};

    #[test]
    fn a_list_of_serialized_items_is_the_serialized_list() {
        let summary = |name: &str, description: Option<&str>| LoraSummary {
            id: LoraId::new(),
            name: name.into(),
            description: description.map(Into::into),
            status: TrainingStatus::Completed,
            creator: CreatorRef {
                id: UserId::new(),
                email: Some("a@example.com".into()),
                display_name: Some("Ann \"the\" <b>".into()),
            },
            usage_count: 7,
            created_at: "2026-11-15T12:00:00.123456Z".parse().unwrap(),
            character_id: Some("char-1".into()),
            triggered_by_job_id: None,
            hidden: None,
        };
        for items in [
            vec![],
            vec![summary("one", None)],
            vec![
                summary("ünïcode \u{1F600}", Some("a\nb")),
                summary("two", Some("")),
            ],
        ] {
            for show in [false, true] {
                let views: Vec<LoraListItem> =
                    items.iter().map(|s| LoraListItem::of(s, show)).collect();
                let serialized: Vec<Vec<u8>> = views
                    .iter()
                    .map(|v| serde_json::to_vec(v).unwrap())
                    .collect();
                let list = LoraList {
                    items: views,
                    total: 1000,
                    total_exact: false,
                    limit: 50,
                    offset: 950,
                };
                assert_eq!(
                    String::from_utf8(LoraList::json_of_serialized_items(
                        &serialized,
                        1000,
                        false,
                        50,
                        950
                    ))
                    .unwrap(),
                    serde_json::to_string(&list).unwrap()
                );
            }
        }
    }
}
