//! Dialect-free pieces both engines share: turning decoded columns into domain types, the
//! event-data shapes, time truncation and the splitting of a search string into words. No SQL
//! lives here.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use loraforge_domain::{
    CreatorRef, Hidden, LoraModel, LoraSummary, MicroUsd, Progress, StatusEvent, TrainingParams,
    TrainingRun, TrainingStatus,
};

use loraforge_domain::validation::{AWAITING_REVIEW, ValidationScores};

use crate::{DbError, EventDetail, PublishVerdict, Result, Settle};

/// How many attempts a compare-and-set gets before giving up with [`DbError::Conflict`].
pub(crate) const CAS_ATTEMPTS: usize = 5;

/// At most this many words of a search string are used; the rest are ignored.
pub(crate) const MAX_SEARCH_WORDS: usize = 8;

/// How a search finds its page, given how many rows match (`matches`, counted first), how many
/// rows the library holds (`rows`, an estimate is enough) and the page asked for.
///
/// Walking the sort order's index and keeping the entries that match stops after `offset + limit`
/// matches, about `(offset + limit) × rows / matches` index steps; fetching every match and
/// sorting costs one row lookup per match, `lookup_cost` times an index step (measured per
/// engine, see docs/performance.md). A two-letter prefix matches thousands of rows, a word a few
/// hundred: the first is found by walking, the second by sorting. Both give the same page.
/// `total` and `total_exact` of a search from a count that stopped at `cap + 1`.
pub(crate) fn capped_total(counted: i64, cap: u64) -> Result<(u64, bool)> {
    let counted = u64::try_from(counted).map_err(|_| corrupt("negative count"))?;
    Ok(if counted > cap {
        (cap, false)
    } else {
        (counted, true)
    })
}

/// Whether a search's page is found by walking the sort index: from the exact count as
/// [`walk_sort_index`] decides, and always when a capped count says the matches are many and
/// the page lies within the cap (the walk then costs at most (offset + limit) × rows / cap steps).
pub(crate) fn walk_search(
    total: u64,
    exact: bool,
    rows: u64,
    offset: u64,
    limit: u32,
    lookup_cost: u64,
) -> bool {
    (!exact && offset.saturating_add(u64::from(limit)) <= total)
        || walk_sort_index(total, rows, offset, limit, lookup_cost)
}

pub(crate) fn walk_sort_index(
    matches: u64,
    rows: u64,
    offset: u64,
    limit: u32,
    lookup_cost: u64,
) -> bool {
    let wanted = u128::from(offset.saturating_add(u64::from(limit)));
    let rows = u128::from(rows.max(matches));
    let matches = u128::from(matches);
    matches
        .saturating_mul(matches)
        .saturating_mul(u128::from(lookup_cost))
        >= wanted.saturating_mul(rows)
}

/// Both engines keep microseconds; truncating before writing makes what is read back equal to
/// what was written.
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// The words of a search string: runs of letters and digits, lowercased, at most
/// [`MAX_SEARCH_WORDS`], duplicates dropped. Everything else (quotes, `*`, parentheses, `-`, `:`,
/// `&`, …) is a separator, so no word can carry query syntax into FTS5 or `to_tsquery`.
pub(crate) fn search_words(search: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for w in search.split(|c: char| !c.is_alphanumeric()) {
        if w.is_empty() {
            continue;
        }
        let w = w.to_lowercase();
        if !words.contains(&w) {
            words.push(w);
        }
        if words.len() == MAX_SEARCH_WORDS {
            break;
        }
    }
    words
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> DbError {
    DbError::Corrupt(what.to_string())
}

pub(crate) fn parse_status(s: &str) -> Result<TrainingStatus> {
    s.parse().map_err(corrupt)
}

pub(crate) fn to_u32(v: i64, column: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("{column} = {v} is out of range")))
}

pub(crate) fn to_u64(v: i64, column: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(format!("{column} = {v} is out of range")))
}

/// A `u64` counter as the signed 64-bit integer both engines store.
pub(crate) fn to_i64(v: u64, column: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| corrupt(format!("{column} = {v} does not fit a database integer")))
}

/// The columns of one `lora_models` row joined with its owner's email, decoded by an engine.
#[derive(Debug)]
pub(crate) struct LoraRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub dataset_id: Uuid,
    pub params: Value,
    pub status: String,
    pub stage: Option<String>,
    pub progress: i64,
    pub estimated_remaining: Option<i64>,
    pub error: Option<String>,
    pub usage_count: i64,
    pub storage_key: Option<String>,
    pub file_size: Option<i64>,
    pub validation_image_keys: Value,
    pub validation_passed: Option<bool>,
    /// JSON of [`ValidationScores`], or NULL.
    pub validation_scores: Option<Value>,
    pub training_cost_micros: i64,
    pub status_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub character_id: Option<String>,
    pub triggered_by_job_id: Option<String>,
    pub sha256: Option<String>,
    pub file_missing_since: Option<DateTime<Utc>>,
    pub hidden: HiddenRecord,
}

/// The moderation columns of a `lora_models` row (`hidden_at`, `hidden_reason`, `hidden_by`).
#[derive(Debug, Default)]
pub(crate) struct HiddenRecord {
    pub at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub by: Option<Uuid>,
}

impl HiddenRecord {
    /// Hidden when `hidden_at` is set; the reason and the admin come with it.
    pub fn into_hidden(self) -> Option<Hidden> {
        let at = self.at?;
        Some(Hidden {
            at,
            reason: self.reason.unwrap_or_default(),
            by: self.by.unwrap_or_default().into(),
        })
    }
}

impl LoraRecord {
    pub fn into_model(self) -> Result<LoraModel> {
        let params: TrainingParams = serde_json::from_value(self.params)
            .map_err(|e| corrupt(format!("params of LoRA {}: {e}", self.id)))?;
        let validation_image_keys: Vec<String> = serde_json::from_value(self.validation_image_keys)
            .map_err(|e| corrupt(format!("validation_image_keys of LoRA {}: {e}", self.id)))?;
        let validation_scores: Option<ValidationScores> = self
            .validation_scores
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| corrupt(format!("validation_scores of LoRA {}: {e}", self.id)))?;
        let percent = u8::try_from(self.progress)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| corrupt(format!("progress = {} is out of range", self.progress)))?;
        Ok(LoraModel {
            id: self.id.into(),
            name: self.name,
            description: self.description,
            creator: CreatorRef {
                id: self.user_id.into(),
                email: self.email,
                display_name: self.display_name,
            },
            status: parse_status(&self.status)?,
            dataset_id: self.dataset_id.into(),
            params,
            progress: Progress {
                stage: self.stage,
                percent,
                estimated_remaining: self
                    .estimated_remaining
                    .map(|v| to_u32(v, "estimated_remaining"))
                    .transpose()?,
            },
            error: self.error,
            usage_count: to_u64(self.usage_count, "usage_count")?,
            storage_key: self.storage_key,
            file_size: self.file_size.map(|v| to_u64(v, "file_size")).transpose()?,
            validation_image_keys,
            validation_passed: self.validation_passed,
            validation_scores,
            training_cost: MicroUsd(self.training_cost_micros),
            status_message: self.status_message,
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
            character_id: self.character_id,
            triggered_by_job_id: self.triggered_by_job_id,
            sha256: self.sha256,
            file_missing_since: self.file_missing_since,
            hidden: self.hidden.into_hidden(),
        })
    }
}

/// The columns of one library listing row, decoded by an engine.
#[derive(Debug)]
pub(crate) struct SummaryRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub status: String,
    pub usage_count: i64,
    pub created_at: DateTime<Utc>,
    pub character_id: Option<String>,
    pub triggered_by_job_id: Option<String>,
    pub hidden: HiddenRecord,
}

impl SummaryRecord {
    pub fn into_summary(self) -> Result<LoraSummary> {
        Ok(LoraSummary {
            id: self.id.into(),
            name: self.name,
            description: self.description,
            status: parse_status(&self.status)?,
            creator: CreatorRef {
                id: self.user_id.into(),
                email: self.email,
                display_name: self.display_name,
            },
            usage_count: to_u64(self.usage_count, "usage_count")?,
            created_at: self.created_at,
            character_id: self.character_id,
            triggered_by_job_id: self.triggered_by_job_id,
            hidden: self.hidden.into_hidden(),
        })
    }
}

/// The columns of one `training_runs` row, decoded by an engine.
#[derive(Debug)]
pub(crate) struct RunRecord {
    pub id: Uuid,
    pub lora_id: Uuid,
    pub attempt: i64,
    pub backend: String,
    pub engine: String,
    pub instance_name: String,
    pub provider_id: String,
    pub gpu_type: Option<String>,
    pub price_per_hour_micros: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub result: Option<Value>,
    pub settled_at: Option<DateTime<Utc>>,
    pub cost_micros: Option<i64>,
    pub instance_gone_at: Option<DateTime<Utc>>,
    pub terminate_failures: i64,
    pub next_terminate_at: Option<DateTime<Utc>>,
    pub route_reason: Option<String>,
}

impl RunRecord {
    pub fn into_run(self) -> Result<TrainingRun> {
        Ok(TrainingRun {
            id: self.id.into(),
            lora_id: self.lora_id.into(),
            attempt: to_u32(self.attempt, "attempt")?,
            backend: self.backend,
            route_reason: self.route_reason,
            engine: self.engine,
            instance_name: self.instance_name,
            provider_id: self.provider_id,
            gpu_type: self.gpu_type,
            price_per_hour: self.price_per_hour_micros.map(MicroUsd),
            created_at: self.created_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            outcome: self.outcome,
            reason: self.reason,
            result: self.result,
            settled_at: self.settled_at,
            cost: self.cost_micros.map(MicroUsd),
            instance_gone_at: self.instance_gone_at,
            terminate_failures: to_u32(self.terminate_failures, "terminate_failures")?,
            next_terminate_at: self.next_terminate_at,
        })
    }
}

/// One status change of a settle: the event, what it records, and whether the LoRA waits for
/// review afterwards.
pub(crate) struct SettleStep {
    pub event: StatusEvent,
    pub detail: EventDetail,
}

/// The status changes `settle` makes, in order (all in one transaction), and the progress to
/// record after them (a review wait). The first change may find the job moved on; then the
/// settle does nothing but mark its run.
pub(crate) fn settle_steps(settle: &Settle) -> (Vec<SettleStep>, Option<Progress>) {
    let step = |event, detail| SettleStep { event, detail };
    match settle {
        Settle::Requeue { reason, .. } => (
            vec![step(
                StatusEvent::Requeue,
                EventDetail::because(reason.clone()),
            )],
            None,
        ),
        Settle::Fail { reason } => (
            vec![step(
                StatusEvent::Fail,
                EventDetail::because(reason.clone()),
            )],
            None,
        ),
        Settle::Reject { files, reason } => (
            vec![step(
                StatusEvent::Fail,
                EventDetail {
                    error: Some(reason.clone()),
                    outputs: Some(files.clone()),
                    validation_passed: None,
                    validation_scores: None,
                },
            )],
            None,
        ),
        Settle::Publish {
            files,
            verdict,
            scores,
        } => {
            let begin = step(
                StatusEvent::BeginValidation,
                EventDetail {
                    outputs: Some(files.clone()),
                    validation_scores: scores.clone(),
                    ..EventDetail::default()
                },
            );
            match verdict {
                PublishVerdict::Complete => (
                    vec![
                        begin,
                        step(
                            StatusEvent::Complete,
                            EventDetail {
                                validation_passed: Some(true),
                                ..EventDetail::default()
                            },
                        ),
                    ],
                    None,
                ),
                PublishVerdict::Fail(reason) => (
                    vec![
                        begin,
                        step(
                            StatusEvent::Fail,
                            EventDetail {
                                error: Some(reason.clone()),
                                validation_passed: Some(false),
                                ..EventDetail::default()
                            },
                        ),
                    ],
                    None,
                ),
                PublishVerdict::Review => (
                    vec![begin],
                    Some(Progress {
                        stage: Some(AWAITING_REVIEW.into()),
                        percent: 100,
                        estimated_remaining: None,
                    }),
                ),
            }
        }
        Settle::Nothing => (Vec::new(), None),
    }
}

/// The listing condition of [`LoraQuery::awaiting_review`](crate::LoraQuery::awaiting_review)
/// (`AND …`). Literal values rather than bound ones, so the partial index of migration 0018
/// (`lora_models_awaiting_review`) can serve it on both engines.
pub(crate) fn awaiting_review_filter() -> String {
    format!(
        " AND m.training_status = '{}' AND m.stage = '{AWAITING_REVIEW}'",
        TrainingStatus::Validating.as_str()
    )
}

/// Data of a "created" event.
pub(crate) fn created_data(name: &str) -> Value {
    json!({ "name": name })
}

/// Data of a "status" event.
pub(crate) fn status_data(
    from: TrainingStatus,
    to: TrainingStatus,
    event: StatusEvent,
    error: Option<&str>,
) -> Value {
    json!({ "from": from.as_str(), "to": to.as_str(), "event": event.as_str(), "error": error })
}

/// Data of a "progress" event.
pub(crate) fn progress_data(p: &Progress) -> Value {
    json!({ "stage": p.stage, "percent": p.percent, "estimated_remaining": p.estimated_remaining })
}

/// Data of an "updated" event.
pub(crate) fn updated_data(description: Option<&str>) -> Value {
    json!({ "description": description })
}

/// Name keys for LoRAs stored before keys existed (migration 0006), given as
/// `(owner, id, name)` oldest first, next to the `(owner, key)` pairs already held: each gets
/// its name's key unless an older LoRA of the same owner holds it; then `<key>` U+001F `<id>`,
/// a key no name can have (keys hold no control characters), so both keep their names and the
/// older one keeps the name's key.
pub(crate) fn backfill_name_keys<U, I>(
    taken: impl IntoIterator<Item = (U, String)>,
    rows: Vec<(U, I, String)>,
) -> Vec<(I, String)>
where
    U: Eq + std::hash::Hash + Clone,
    I: std::fmt::Display,
{
    let mut held: std::collections::HashSet<(U, String)> = taken.into_iter().collect();
    rows.into_iter()
        .map(|(owner, id, name)| {
            let key = loraforge_domain::text::name_key(&name);
            let key = if held.contains(&(owner.clone(), key.clone())) {
                format!("{key}\u{1f}{id}")
            } else {
                key
            };
            held.insert((owner, key.clone()));
            (id, key)
        })
        .collect()
}

/// The names of the final statuses (`completed`, `failed`, `cancelled`).
pub(crate) fn final_statuses() -> Vec<&'static str> {
    loraforge_domain::TrainingStatus::ALL
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_past_the_cap_are_the_cap_and_not_exact() {
        assert_eq!(capped_total(0, 1_000).unwrap(), (0, true));
        assert_eq!(capped_total(1_000, 1_000).unwrap(), (1_000, true));
        assert_eq!(capped_total(1_001, 1_000).unwrap(), (1_000, false));
        assert!(capped_total(-1, 1_000).is_err());
    }

    #[test]
    fn a_capped_count_walks_within_the_cap_and_sorts_past_it() {
        // Postgres' lookup cost (2): 1,000 exact matches of 100k rows sort ...
        assert!(!walk_search(1_000, true, 100_000, 0, 50, 2));
        // ... but "1,000 or more" walks for a page within the cap,
        assert!(walk_search(1_000, false, 100_000, 950, 50, 2));
        // and sorts for a page past it.
        assert!(!walk_search(1_000, false, 100_000, 960, 50, 2));
    }

    #[test]
    fn broad_searches_walk_the_index_and_narrow_ones_sort() {
        // 100k rows, first page of 50, a row lookup 15 index steps.
        assert!(
            walk_sort_index(9_800, 100_000, 0, 50, 15),
            "a two-letter prefix"
        );
        assert!(!walk_sort_index(407, 100_000, 0, 50, 15), "a word");
        assert!(
            !walk_sort_index(0, 100_000, 0, 50, 15),
            "nothing to walk for"
        );
        // Deep pages need more steps of the walk: the same prefix sorts instead.
        assert!(!walk_sort_index(9_800, 100_000, 9_000, 50, 1));
        // An estimate of the rows below the matches (stale statistics) is taken as the matches.
        assert!(walk_sort_index(100, 0, 0, 50, 1));
        assert!(walk_sort_index(
            u64::MAX,
            u64::MAX,
            u64::MAX,
            u32::MAX,
            u64::MAX
        ));
    }

    #[test]
    fn search_words_strip_query_syntax() {
        assert_eq!(search_words("  Cyber  GIRL "), ["cyber", "girl"]);
        assert_eq!(
            search_words("\"x\"* NEAR(a b) -c 'd; DROP"),
            ["x", "near", "a", "b", "c", "d", "drop"]
        );
        assert_eq!(search_words("a:* & b | !c"), ["a", "b", "c"]);
        assert!(search_words(" \"*()- ").is_empty());
        assert_eq!(search_words("猫の騎士 café"), ["猫の騎士", "café"]);
        assert_eq!(search_words("a a A"), ["a"]);
        assert_eq!(search_words("1 2 3 4 5 6 7 8 9 10").len(), MAX_SEARCH_WORDS);
    }
}

#[cfg(test)]
mod name_key_tests {
    use super::backfill_name_keys;

    #[test]
    fn the_oldest_keeps_the_key_and_later_collisions_get_their_own() {
        let keys = backfill_name_keys(
            [(1, "dog".to_owned())],
            vec![
                (1, "a", "Cat".to_owned()),
                (1, "b", "CAT".to_owned()),
                (2, "c", "cat".to_owned()),
                (1, "d", "Dog".to_owned()),
                (1, "e", "Ｃａｔ".to_owned()),
            ],
        );
        assert_eq!(
            keys,
            [
                ("a", "cat".to_owned()),
                ("b", "cat\u{1f}b".to_owned()),
                ("c", "cat".to_owned()),
                ("d", "dog\u{1f}d".to_owned()),
                ("e", "cat\u{1f}e".to_owned()),
            ]
        );
    }
}

/// A stored breaker state.
pub(crate) fn parse_breaker_state(s: &str) -> Result<loraforge_domain::breaker::BreakerState> {
    loraforge_domain::breaker::BreakerState::parse(s)
        .ok_or_else(|| corrupt(format!("breaker state {s:?}")))
}

/// Failures at or after this count toward opening `b`: within the window, and not before the
/// breaker last closed.
pub(crate) fn breaker_window_start(
    b: &loraforge_domain::breaker::Breaker,
    rules: &loraforge_domain::breaker::BreakerRules,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let start = now - rules.window;
    b.counted_from.map_or(start, |from| from.max(start))
}

/// Failures older than this are pruned: past any window, kept a while so a late duplicate
/// report of the same failure is still recognised.
pub(crate) fn breaker_prune_before(
    rules: &loraforge_domain::breaker::BreakerRules,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    now - rules.window - chrono::Duration::hours(24)
}
