//! How often each LoRA is handed to a generation (`POST /api/v1/generation/resolve`). A use is
//! one (generation, LoRA) pair, recorded once: a retried generation, even two retries at once,
//! counts once. `lora_models.usage_count` (the library's "popular" order) moves in the same
//! transaction as the new use row, so the two never disagree.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use loraforge_domain::{LoraId, UserId};

use crate::Result;

/// Uses of one LoRA on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayUses {
    pub day: NaiveDate,
    pub uses: u64,
}

#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Records that generation `generation_id`, run by `user`, was handed `loras` at `now`. Each
    /// (generation, LoRA) pair is stored once; for each pair new in this call the LoRA's
    /// `usage_count` goes up by one in the same transaction. Returns the LoRAs counted by this
    /// call (none for a retry). Duplicates in `loras` count once.
    async fn record_uses(
        &self,
        generation_id: &str,
        loras: &[LoraId],
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<LoraId>>;

    /// Uses of `lora` per UTC day from `from` to `to` (both included), oldest first; days without
    /// uses are left out (the caller zero-fills).
    async fn uses_by_day(
        &self,
        lora: LoraId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DayUses>>;
}

/// `loras` without repeats, in a fixed order, so concurrent recorders lock rows in the same
/// order (no deadlock between two retries of one generation).
pub(crate) fn distinct_sorted(loras: &[LoraId]) -> Vec<LoraId> {
    let mut v = loras.to_vec();
    v.sort_by_key(|l| l.0);
    v.dedup();
    v
}
