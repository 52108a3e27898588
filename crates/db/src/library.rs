//! The library's query and page types, and the rows a bulk import writes.

use chrono::{DateTime, Utc};

use loraforge_domain::{
    DatasetId, LoraId, LoraName, LoraSort, TrainingParams, TrainingStatus, UserId,
};

/// A library query. `search` matches words in name and description by prefix,
/// case-insensitively ("cyber" finds "Cyberpunk Girl"); every word must match.
#[derive(Debug, Clone, Default)]
pub struct LoraQuery {
    pub status: Option<TrainingStatus>,
    pub search: Option<String>,
    pub creator: Option<UserId>,
    pub sort: LoraSort,
    pub limit: u32,
    pub offset: u64,
    /// Only LoRAs made for this character.
    pub character_id: Option<String>,
    /// Only LoRAs this generation job asked for.
    pub triggered_by_job_id: Option<String>,
    /// Also list LoRAs an admin hid (an admin's listing, an owner's own); `false` (the default,
    /// the public library): hidden LoRAs are left out of the rows and the total.
    pub include_hidden: bool,
    /// Only LoRAs waiting for an admin's review: in `validating` with their checks done and
    /// no scoring model or automatic approval to decide (stage
    /// [`AWAITING_REVIEW`](loraforge_domain::validation::AWAITING_REVIEW)).
    pub awaiting_review: bool,
}

/// A search counts its matches exactly only up to this many (as GitHub's and Elasticsearch's
/// search APIs do); past it, [`Page::total`] is this number and [`Page::total_exact`] is false.
/// A two-letter prefix matches tens of thousands of LoRAs, and counting them all cost more than
/// the page (docs/performance.md, issue 9). Pages past the cap are still served, found by
/// sorting every match: slower, but correct.
pub const SEARCH_TOTAL_CAP: u64 = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Every match, or [`SEARCH_TOTAL_CAP`] when a search matches more (then `total_exact` is
    /// false and `total` is a lower bound).
    pub total: u64,
    pub total_exact: bool,
}

impl<T> Page<T> {
    /// The same page with each item made into another.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            total: self.total,
            total_exact: self.total_exact,
        }
    }
}

/// One LoRA for [`Repository::bulk_insert_library`]: a finished library entry as an import or a
/// benchmark describes it.
#[derive(Debug, Clone)]
pub struct LibraryRow {
    pub id: LoraId,
    pub owner: UserId,
    pub owner_email: Option<String>,
    pub name: LoraName,
    pub description: Option<String>,
    /// Must exist (see [`Repository::insert_dataset`]); its owner is not checked.
    pub dataset_id: DatasetId,
    pub params: TrainingParams,
    pub status: TrainingStatus,
    pub usage_count: u64,
    pub created_at: DateTime<Utc>,
}
