//! A LoRA model as the library knows it, and the views the API shows of it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::moderation::Hidden;
use crate::{DatasetId, LoraId, MicroUsd, TrainingParams, TrainingStatus, UserId};

/// Who made a LoRA. The e-mail is private (shown only where an operator opted in, or to its
/// owner); everyone sees [`CreatorRef::public_name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatorRef {
    pub id: UserId,
    pub email: Option<String>,
    /// The name the creator chose, if any.
    #[serde(default)]
    pub display_name: Option<String>,
}

impl CreatorRef {
    /// The chosen display name, else one derived without revealing the e-mail.
    pub fn public_name(&self) -> String {
        self.display_name
            .clone()
            .unwrap_or_else(|| crate::default_display_name(self.id, self.email.as_deref()))
    }
}

/// Live progress of a job, as the status endpoint shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Free-form stage name from the trainer: "queued", "caching_latents", "training", …
    pub stage: Option<String>,
    /// 0–100.
    pub percent: u8,
    /// Seconds, when the trainer can estimate them.
    pub estimated_remaining: Option<u32>,
}

/// The full record of a LoRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraModel {
    pub id: LoraId,
    pub name: String,
    pub description: Option<String>,
    pub creator: CreatorRef,
    pub status: TrainingStatus,
    pub dataset_id: DatasetId,
    pub params: TrainingParams,
    pub progress: Progress,
    /// Why it failed or was cancelled, for people.
    pub error: Option<String>,
    pub usage_count: u64,
    /// Storage key of the trained file, once there is one.
    pub storage_key: Option<String>,
    pub file_size: Option<u64>,
    pub validation_image_keys: Vec<String>,
    pub validation_passed: Option<bool>,
    /// The scoring model's scores of the validation images and the threshold the rule used;
    /// `None` when no scoring model judged them (a person did, or the operator auto-approves).
    #[serde(default)]
    pub validation_scores: Option<crate::validation::ValidationScores>,
    /// The sum of its runs' costs.
    pub training_cost: MicroUsd,
    /// Why it is where it is, when that is not an error ("waiting for a GPU: …").
    pub status_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The character (the generator's id) this LoRA was trained for, if any.
    #[serde(default)]
    pub character_id: Option<String>,
    /// The generation job that asked for this LoRA, if any.
    #[serde(default)]
    pub triggered_by_job_id: Option<String>,
    /// Lowercase hex sha256 of the model file, once a resolve has recorded it.
    #[serde(default)]
    pub sha256: Option<String>,
    /// When a resolve first found the file missing from storage (cleared when found again).
    #[serde(default)]
    pub file_missing_since: Option<DateTime<Utc>>,
    // --- moderation (`crate::moderation`) ---
    /// Set while an admin has the LoRA hidden from the library; `None`: visible.
    #[serde(default)]
    pub hidden: Option<Hidden>,
}

impl LoraModel {
    /// Hidden by an admin: only its owner and admins may see it, and it must not be applied
    /// for anyone else (a generation falls back, reason `hidden`).
    pub fn is_hidden(&self) -> bool {
        self.hidden.is_some()
    }

    /// Waits in `validating` for an admin's decision (see [`crate::validation::AWAITING_REVIEW`]).
    pub fn awaits_review(&self) -> bool {
        self.status == crate::TrainingStatus::Validating
            && self.progress.stage.as_deref() == Some(crate::validation::AWAITING_REVIEW)
    }

    /// Whether `viewer` may see this LoRA at all: everyone while it is visible; once hidden,
    /// its owner and admins only (others get a 404, as if it did not exist).
    pub fn visible_to(&self, viewer: UserId, is_admin: bool) -> bool {
        !self.is_hidden() || is_admin || self.creator.id == viewer
    }
}

/// One row of the library listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSummary {
    pub id: LoraId,
    pub name: String,
    pub description: Option<String>,
    pub status: TrainingStatus,
    pub creator: CreatorRef,
    pub usage_count: u64,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub character_id: Option<String>,
    #[serde(default)]
    pub triggered_by_job_id: Option<String>,
    /// Set when hidden (only listings that include hidden LoRAs return such rows).
    #[serde(default)]
    pub hidden: Option<Hidden>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraSort {
    /// Most used first; ties newest first.
    Popular,
    /// Newest first.
    #[default]
    Recent,
    /// By name, case-insensitively; ties newest first.
    Name,
}
