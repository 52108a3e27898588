//! The monthly archival review: completed LoRAs not used for a long time, with their stored
//! bytes, and admins' approvals (rows only; nothing is moved or deleted). Usage is not tracked
//! yet (no `last_used_at`), so "not used" means completed (or created) before the cutoff.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::LoraId;

use crate::Result;

/// A LoRA the review lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivalCandidate {
    pub lora_id: LoraId,
    pub name: String,
    /// `completed_at`, else `created_at`.
    pub last_activity: DateTime<Utc>,
    pub file_size: u64,
    /// The latest approval of archiving it, if any.
    pub approved_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait ArchivalStore: Send + Sync {
    /// Completed LoRAs with a stored file whose last activity is before `cutoff`, oldest first.
    async fn archival_candidates(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ArchivalCandidate>>;

    /// Records `by`'s approval of archiving `lora`; `false` when there is no such LoRA.
    async fn approve_archival(&self, lora: LoraId, by: &str, now: DateTime<Utc>) -> Result<bool>;
}
