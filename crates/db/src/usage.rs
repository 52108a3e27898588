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

/// One generation's hand-out: the LoRAs `user` was handed for generation `generation_id` at
/// `at`. [`UsageStore::record_use_batch`] takes several at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseRecord {
    pub generation_id: String,
    pub loras: Vec<LoraId>,
    pub user: UserId,
    pub at: DateTime<Utc>,
}

#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Records several generations' hand-outs in one transaction (the server's group commit,
    /// `server::usage::UsageWriter`, gathers the requests in flight into one batch). Each
    /// (generation, LoRA) pair is stored once — in the batch and ever —, and for each pair new
    /// in this call the LoRA's `usage_count` goes up by one in the same transaction. Returns,
    /// for each record in order, the LoRAs counted for it, sorted by id (none for a retry; a
    /// pair repeated within the batch counts for its first record).
    async fn record_use_batch(&self, uses: &[UseRecord]) -> Result<Vec<Vec<LoraId>>>;

    /// [`Self::record_use_batch`] of one record: generation `generation_id`, run by `user`, was
    /// handed `loras` at `now`; returns the LoRAs counted by this call (none for a retry).
    /// Duplicates in `loras` count once.
    async fn record_uses(
        &self,
        generation_id: &str,
        loras: &[LoraId],
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<LoraId>> {
        let record = UseRecord {
            generation_id: generation_id.to_owned(),
            loras: loras.to_vec(),
            user,
            at: now,
        };
        Ok(self
            .record_use_batch(std::slice::from_ref(&record))
            .await?
            .pop()
            .unwrap_or_default())
    }

    /// Uses of `lora` per UTC day from `from` to `to` (both included), oldest first; days without
    /// uses are left out (the caller zero-fills).
    async fn uses_by_day(
        &self,
        lora: LoraId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DayUses>>;
}

/// The batch's (generation, LoRA) pairs, each once, with the index of the first record that
/// holds it, sorted by LoRA id so that concurrent recorders lock rows in the same order (no
/// deadlock between two batches using the same LoRAs).
pub(crate) fn batch_pairs(uses: &[UseRecord]) -> Vec<(usize, LoraId)> {
    let mut seen = std::collections::HashSet::new();
    let mut pairs: Vec<(usize, LoraId)> = uses
        .iter()
        .enumerate()
        .flat_map(|(i, u)| u.loras.iter().map(move |l| (i, *l)))
        .filter(|(i, l)| seen.insert((uses[*i].generation_id.as_str(), *l)))
        .collect();
    pairs.sort_by_key(|(i, l)| (l.0, *i));
    pairs
}

/// The batch's distinct LoRAs, sorted by id (the order rows are locked in).
pub(crate) fn batch_loras(pairs: &[(usize, LoraId)]) -> Vec<LoraId> {
    let mut v: Vec<LoraId> = pairs.iter().map(|(_, l)| *l).collect();
    v.dedup();
    v
}

/// What the store reported as newly inserted (generation, LoRA) pairs, given back to the
/// records they came from (each pair's first record), each record's LoRAs sorted by id.
pub(crate) fn split_counted(
    uses: &[UseRecord],
    pairs: &[(usize, LoraId)],
    inserted: impl IntoIterator<Item = (String, LoraId)>,
) -> Vec<Vec<LoraId>> {
    let owner: std::collections::HashMap<(&str, LoraId), usize> = pairs
        .iter()
        .map(|(i, l)| ((uses[*i].generation_id.as_str(), *l), *i))
        .collect();
    let mut out = vec![Vec::new(); uses.len()];
    for (g, l) in inserted {
        if let Some(i) = owner.get(&(g.as_str(), l)) {
            out[*i].push(l);
        }
    }
    for v in &mut out {
        v.sort_by_key(|l| l.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(g: &str, loras: &[LoraId]) -> UseRecord {
        UseRecord {
            generation_id: g.to_owned(),
            loras: loras.to_vec(),
            user: UserId::new(),
            at: Utc::now(),
        }
    }

    #[test]
    fn a_pair_repeated_in_a_batch_belongs_to_its_first_record() {
        let (a, b) = (LoraId::new(), LoraId::new());
        let uses = [rec("g1", &[b, a, b]), rec("g2", &[a]), rec("g1", &[a])];
        let pairs = batch_pairs(&uses);
        assert_eq!(pairs.len(), 3, "{pairs:?}");
        assert!(
            pairs.windows(2).all(|w| w[0].1.0 <= w[1].1.0),
            "sorted by LoRA: {pairs:?}"
        );
        let mut sorted = vec![a, b];
        sorted.sort_by_key(|l| l.0);
        assert_eq!(batch_loras(&pairs), sorted);
        let inserted = vec![
            ("g1".to_owned(), a),
            ("g1".to_owned(), b),
            ("g2".to_owned(), a),
        ];
        let out = split_counted(&uses, &pairs, inserted);
        assert_eq!(out, vec![sorted, vec![a], vec![]]);
        // A pair the store did not insert (stored earlier) counts for nobody.
        let out = split_counted(&uses, &pairs, vec![("g2".to_owned(), a)]);
        assert_eq!(out, vec![vec![], vec![a], vec![]]);
    }
}
