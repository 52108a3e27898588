//! What the generator's hand-off (`POST /api/v1/generation/resolve`) reads and writes beyond the
//! library: a character's newest completed LoRA, the model file's sha256 once known, and the
//! time a completed LoRA's file was first found missing (migration 0012). Failing a LoRA whose
//! file is gone still goes through [`crate::Repository::apply_event`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::{LoraId, LoraModel};

use crate::Result;

#[async_trait]
pub trait HandoffStore: Send + Sync {
    /// For each of `character_ids`, the newest (by creation) `completed` LoRA made for it,
    /// whoever owns it: the library is public. Hidden LoRAs (moderation) are passed over. One
    /// query for all of them (index `lora_models_character_ready`); characters without one are
    /// absent from the answer, which is in no particular order.
    async fn newest_completed_of_characters(
        &self,
        character_ids: &[String],
    ) -> Result<Vec<LoraModel>>;

    /// [`HandoffStore::newest_completed_of_characters`] of one character.
    async fn newest_completed_of_character(&self, character_id: &str) -> Result<Option<LoraModel>> {
        Ok(self
            .newest_completed_of_characters(&[character_id.to_owned()])
            .await?
            .pop())
    }

    /// Records the model file's sha256 (lowercase hex) unless one is recorded already; a second
    /// writer with the same file changes nothing.
    async fn record_sha256(&self, lora: LoraId, sha256: &str) -> Result<()>;

    /// A check found the LoRA's file missing at `now`: keeps the first time it was found missing
    /// and returns it (`now` on the first miss).
    async fn note_file_missing(&self, lora: LoraId, now: DateTime<Utc>) -> Result<DateTime<Utc>>;

    /// A check found the file: forgets an earlier miss (a store that was catching up).
    async fn clear_file_missing(&self, lora: LoraId) -> Result<()>;
}

// The statements both engines run (they differ only in how ids and times are bound): the
// rules — the first hash and the first miss kept — live here once.

/// `$1` the sha256, `$2` the LoRA: the first recorded hash stays.
pub(crate) const RECORD_SHA256: &str =
    "UPDATE lora_models SET sha256 = $1 WHERE id = $2 AND sha256 IS NULL";

/// `$1` now, `$2` the LoRA; returns the first miss.
pub(crate) const NOTE_FILE_MISSING: &str = "UPDATE lora_models \
     SET file_missing_since = coalesce(file_missing_since, $1) WHERE id = $2 \
     RETURNING file_missing_since";

/// `$1` the LoRA.
pub(crate) const CLEAR_FILE_MISSING: &str = "UPDATE lora_models SET file_missing_since = NULL \
     WHERE id = $1 AND file_missing_since IS NOT NULL";
