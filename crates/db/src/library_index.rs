//! The public library in memory: what the library page and the LoRA selector ask for (visible
//! LoRAs, optionally of one status, searched by word prefixes, in one of the three sorts), answered
//! without a database query. Kept in step with the database by its change feed
//! ([`LibraryFeed`](crate::feed::LibraryFeed), migration 0023); [`SyncedIndex::catch_up`]
//! (`synced.rs`) applies what changed.
//!
//! Answers are the store's: the same matches (every search word a prefix of some word of the
//! name or description, words split as [`search_words`] splits them — FTS5's `unicode61` rule),
//! the same orders, the same capped totals ([`SEARCH_TOTAL_CAP`]). Listings it does not serve
//! (hidden LoRAs, a creator's own, awaiting review, the hand-off filters) go to the database:
//! [`LibraryIndex::query`] says `None`. Where the two engines already differ, the index follows
//! one rule: words are split as FTS5 splits them (Postgres's parser keeps `a@b.com` or `v1.5` as
//! one word), and the name sort lowercases every letter (SQLite's `lower()` only ASCII ones); the
//! conformance story compares names and text where the engines agree.
//!
//! Cost: one entry per LoRA (its summary, its words, its listing JSON, its place in three sort
//! orders and in the word and 1–3 letter prefix postings): ~1.8 KB each, measured at 100,000
//! (docs/performance.md).

use std::borrow::Cow;
use std::cmp::{Ordering as Order, Reverse};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use loraforge_domain::{LoraId, LoraSort, LoraSummary, TrainingStatus};

use crate::common::search_words;
use crate::{LoraQuery, Page, SEARCH_TOTAL_CAP};

mod synced;
pub use synced::{CaughtUp, SyncedIndex};

type PopularKey = (Reverse<u64>, Reverse<DateTime<Utc>>, Reverse<LoraId>);
type RecentKey = (Reverse<DateTime<Utc>>, Reverse<LoraId>);
type NameKey = (String, Reverse<DateTime<Utc>>, Reverse<LoraId>);

/// Prefixes of a word up to this many characters have their own postings (FTS5's
/// `prefix = '2 3'`, plus single letters); a longer search word unions the postings of the
/// words it starts.
const PREFIX_CHARS: usize = 3;

#[derive(Debug)]
struct Entry {
    summary: LoraSummary,
    /// The name lowercased: the name sort's key.
    name_lower: String,
    /// What the renderer made of the summary (empty without one).
    rendered: Rendered,
    words: Vec<String>,
}

impl Entry {
    fn visible(&self) -> bool {
        self.summary.hidden.is_none()
    }

    /// Every search word is a prefix of one of the entry's words.
    fn matches(&self, words: &[String]) -> bool {
        words
            .iter()
            .all(|w| self.words.iter().any(|mine| mine.starts_with(w.as_str())))
    }
}

/// The words of a LoRA's name and description, split and lowercased as a search is.
fn words_of(s: &LoraSummary) -> Vec<String> {
    let mut words = Vec::new();
    for text in [Some(s.name.as_str()), s.description.as_deref()]
        .into_iter()
        .flatten()
    {
        for w in text.split(|c: char| !c.is_alphanumeric()) {
            if !w.is_empty() {
                let w = w.to_lowercase();
                if !words.contains(&w) {
                    words.push(w);
                }
            }
        }
    }
    words
}

/// The 1..=PREFIX_CHARS-character prefixes of `words`, each once.
fn prefixes_of(words: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for w in words {
        for (n, (i, c)) in w.char_indices().enumerate() {
            if n == PREFIX_CHARS {
                break;
            }
            let p = &w[..i + c.len_utf8()];
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// An entry's order keys, kept apart from the entries so that sorting a search's matches reads
/// one small array (the entries are ~1 KB each, scattered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OrderKeys {
    usage: u64,
    created: (i64, u32),
    id: u128,
}

impl OrderKeys {
    fn of(s: &LoraSummary) -> Self {
        Self {
            usage: s.usage_count,
            created: (
                s.created_at.timestamp(),
                s.created_at.timestamp_subsec_nanos(),
            ),
            id: s.id.as_uuid().as_u128(),
        }
    }
}

/// An entry's flag: hidden, or its status's place in [`TrainingStatus::ALL`].
const HIDDEN: u8 = u8::MAX;

fn status_flag(s: TrainingStatus) -> u8 {
    TrainingStatus::ALL
        .iter()
        .position(|x| *x == s)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(HIDDEN - 1)
}

fn flag_of(s: &LoraSummary) -> u8 {
    if s.hidden.is_some() {
        HIDDEN
    } else {
        status_flag(s.status)
    }
}

fn popular_key(s: &LoraSummary) -> PopularKey {
    (Reverse(s.usage_count), Reverse(s.created_at), Reverse(s.id))
}
fn recent_key(s: &LoraSummary) -> RecentKey {
    (Reverse(s.created_at), Reverse(s.id))
}
fn name_key(s: &LoraSummary) -> NameKey {
    (s.name.to_lowercase(), Reverse(s.created_at), Reverse(s.id))
}

fn insert_sorted(list: &mut Vec<u32>, slot: u32) {
    if let Err(at) = list.binary_search(&slot) {
        list.insert(at, slot);
    }
}
fn remove_sorted(list: &mut Vec<u32>, slot: u32) {
    if let Ok(at) = list.binary_search(&slot) {
        list.remove(at);
    }
}

/// A LoRA as its listing shows it, made once per change (e.g. its JSON), so that a page is
/// answered without serializing anything.
pub type Rendered = Arc<[u8]>;

/// Makes a LoRA's [`Rendered`] form.
pub type Renderer = Arc<dyn Fn(&LoraSummary) -> Vec<u8> + Send + Sync>;

/// The library in memory. Not synchronized: [`SyncedIndex`] wraps it.
#[derive(Default)]
pub struct LibraryIndex {
    render: Option<Renderer>,
    entries: Vec<Entry>,
    slots: HashMap<LoraId, u32>,
    /// Visible entries in each sort's order.
    popular: BTreeMap<PopularKey, u32>,
    recent: BTreeMap<RecentKey, u32>,
    by_name: BTreeMap<NameKey, u32>,
    /// Per slot: hidden, or the status (see [`flag_of`]).
    flags: Vec<u8>,
    /// Per slot: the order keys.
    keys: Vec<OrderKeys>,
    /// Every entry (hidden ones too) under each of its words, slots ascending.
    words: BTreeMap<String, Vec<u32>>,
    /// … and under each 1..=PREFIX_CHARS-character prefix of its words, once per entry.
    prefixes: HashMap<String, Vec<u32>>,
    visible: u64,
    visible_by_status: HashMap<TrainingStatus, u64>,
}

impl std::fmt::Debug for LibraryIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibraryIndex")
            .field("entries", &self.entries.len())
            .field("visible", &self.visible)
            .finish_non_exhaustive()
    }
}

impl LibraryIndex {
    /// An empty index whose entries are also kept rendered by `render`.
    pub fn with_renderer(render: Renderer) -> Self {
        Self {
            render: Some(render),
            ..Self::default()
        }
    }

    fn render(&self, summary: &LoraSummary) -> Rendered {
        match &self.render {
            Some(render) => render(summary).into(),
            None => Arc::from(&[][..]),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes in a LoRA's current state (new, or changed in any way).
    pub fn apply(&mut self, summary: LoraSummary) {
        let held = self.slots.get(&summary.id).copied();
        if held.is_some_and(|slot| self.entries[slot as usize].summary == summary) {
            // Read again as it was (on Postgres each round of the feed re-reads what changed
            // since its horizon): nothing to re-index or render.
            return;
        }
        let words = words_of(&summary);
        let slot = match held {
            Some(slot) => {
                self.unlist(slot);
                if self.entries[slot as usize].words != words {
                    self.unindex_words(slot);
                    self.entries[slot as usize].words = words;
                    self.index_words(slot);
                }
                let rendered = self.render(&summary);
                self.flags[slot as usize] = flag_of(&summary);
                self.keys[slot as usize] = OrderKeys::of(&summary);
                let e = &mut self.entries[slot as usize];
                e.name_lower = summary.name.to_lowercase();
                e.rendered = rendered;
                e.summary = summary;
                slot
            }
            None => {
                let slot = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
                self.slots.insert(summary.id, slot);
                self.flags.push(flag_of(&summary));
                self.keys.push(OrderKeys::of(&summary));
                self.entries.push(Entry {
                    name_lower: summary.name.to_lowercase(),
                    rendered: self.render(&summary),
                    summary,
                    words,
                });
                self.index_words(slot);
                slot
            }
        };
        self.list(slot);
    }

    fn list(&mut self, slot: u32) {
        let e = &self.entries[slot as usize];
        if !e.visible() {
            return;
        }
        let s = &e.summary;
        self.popular.insert(popular_key(s), slot);
        self.recent.insert(recent_key(s), slot);
        self.by_name.insert(name_key(s), slot);
        self.visible += 1;
        *self.visible_by_status.entry(s.status).or_default() += 1;
    }

    fn unlist(&mut self, slot: u32) {
        let e = &self.entries[slot as usize];
        if !e.visible() {
            return;
        }
        let s = &e.summary;
        self.popular.remove(&popular_key(s));
        self.recent.remove(&recent_key(s));
        self.by_name.remove(&name_key(s));
        self.visible -= 1;
        if let Some(n) = self.visible_by_status.get_mut(&s.status) {
            *n -= 1;
        }
    }

    fn index_words(&mut self, slot: u32) {
        let e = &self.entries[slot as usize];
        for w in &e.words {
            insert_sorted(self.words.entry(w.clone()).or_default(), slot);
        }
        for p in prefixes_of(&e.words) {
            insert_sorted(self.prefixes.entry(p.to_owned()).or_default(), slot);
        }
    }

    fn unindex_words(&mut self, slot: u32) {
        let e = &self.entries[slot as usize];
        for w in &e.words {
            if let Some(list) = self.words.get_mut(w) {
                remove_sorted(list, slot);
                if list.is_empty() {
                    self.words.remove(w);
                }
            }
        }
        for p in prefixes_of(&e.words) {
            if let Some(list) = self.prefixes.get_mut(p) {
                remove_sorted(list, slot);
                if list.is_empty() {
                    self.prefixes.remove(p);
                }
            }
        }
    }

    /// The entries with a word starting with `word`, slots ascending, each once.
    fn postings(&self, word: &str) -> Cow<'_, [u32]> {
        if word.chars().count() <= PREFIX_CHARS {
            return match self.prefixes.get(word) {
                Some(list) => Cow::Borrowed(list.as_slice()),
                None => Cow::Owned(Vec::new()),
            };
        }
        let mut out: Vec<u32> = Vec::new();
        for (_, list) in self
            .words
            .range::<str, _>((std::ops::Bound::Included(word), std::ops::Bound::Unbounded))
            .take_while(|(w, _)| w.starts_with(word))
        {
            out.extend_from_slice(list);
        }
        out.sort_unstable();
        out.dedup();
        Cow::Owned(out)
    }

    /// Whether [`Self::query`] answers `query`: the public library, at most a status filter.
    pub fn serves(query: &LoraQuery) -> bool {
        !query.include_hidden
            && !query.awaiting_review
            && query.creator.is_none()
            && query.character_id.is_none()
            && query.triggered_by_job_id.is_none()
    }

    /// The page the store would answer, or `None` for a listing this index does not serve.
    pub fn query(&self, query: &LoraQuery) -> Option<Page<LoraSummary>> {
        self.page(query)
            .map(|p| p.map(|slot| self.entries[slot as usize].summary.clone()))
    }

    /// [`Self::query`] with each LoRA as the renderer made it ([`SyncedIndex::with_renderer`]).
    pub fn query_rendered(&self, query: &LoraQuery) -> Option<Page<Rendered>> {
        self.page(query)
            .map(|p| p.map(|slot| self.entries[slot as usize].rendered.clone()))
    }

    /// The page's entries.
    fn page(&self, query: &LoraQuery) -> Option<Page<u32>> {
        if !Self::serves(query) {
            return None;
        }
        let words = query
            .search
            .as_deref()
            .map(search_words)
            .unwrap_or_default();
        // Visible, and of the status asked for (if any): one byte per entry.
        let wanted = query.status.map(status_flag);
        let listed = |slot: u32| {
            let flag = self.flags[slot as usize];
            flag != HIDDEN && wanted.is_none_or(|w| w == flag)
        };
        if words.is_empty() {
            let total = match query.status {
                Some(s) => self.visible_by_status.get(&s).copied().unwrap_or(0),
                None => self.visible,
            };
            let items = self.walk(query, listed);
            return Some(Page {
                items,
                total,
                total_exact: true,
            });
        }

        // Candidates: the entries under the rarest word (they match it); the other words are
        // tested per entry.
        let mut lists: Vec<(Cow<'_, [u32]>, &String)> =
            words.iter().map(|w| (self.postings(w), w)).collect();
        lists.sort_by_key(|(l, _)| l.len());
        let (candidates, rarest) = lists.swap_remove(0);
        let rest: Vec<String> = words.iter().filter(|w| *w != rarest).cloned().collect();
        let also = |slot: u32| rest.is_empty() || self.entries[slot as usize].matches(&rest);
        let mut matches: Vec<u32> = Vec::new();
        for &slot in candidates.iter() {
            if listed(slot) && also(slot) {
                matches.push(slot);
                if matches.len() as u64 > SEARCH_TOTAL_CAP {
                    break;
                }
            }
        }
        let found = matches.len() as u64;
        let (total, total_exact) = if found > SEARCH_TOTAL_CAP {
            (SEARCH_TOTAL_CAP, false)
        } else {
            (found, true)
        };
        // Up to the cap, the matches are all at hand: sort them. Past it, walk the sort order.
        if total_exact {
            // Only the first offset + limit in order matter: select them, then sort those.
            let keys = &self.keys;
            let newest = |a: &u32, b: &u32| {
                let (x, y) = (&keys[*a as usize], &keys[*b as usize]);
                (y.created, y.id).cmp(&(x.created, x.id))
            };
            let order = |a: &u32, b: &u32| -> Order {
                match query.sort {
                    LoraSort::Popular => keys[*b as usize]
                        .usage
                        .cmp(&keys[*a as usize].usage)
                        .then_with(|| newest(a, b)),
                    LoraSort::Recent => newest(a, b),
                    LoraSort::Name => self.entries[*a as usize]
                        .name_lower
                        .cmp(&self.entries[*b as usize].name_lower)
                        .then_with(|| newest(a, b)),
                }
            };
            let offset = usize::try_from(query.offset).unwrap_or(usize::MAX);
            let end = offset
                .saturating_add(query.limit as usize)
                .min(matches.len());
            if end < matches.len() && end > 0 {
                matches.select_nth_unstable_by(end - 1, order);
                matches.truncate(end);
            }
            matches.sort_unstable_by(order);
            let items = matches.into_iter().skip(offset).collect();
            return Some(Page {
                items,
                total,
                total_exact,
            });
        }
        // Many matches: walk the sort order, keeping the candidates that match. The walk takes
        // about (offset + limit) × visible / candidates steps: when a binary search of the
        // candidates per step costs less than a bitmap of them all, search, else build the bitmap.
        let reach = (query.offset + u64::from(query.limit)).saturating_mul(self.visible)
            / (candidates.len() as u64).max(1);
        let log = u64::from(usize::BITS - candidates.len().leading_zeros());
        let items = if reach.saturating_mul(log) < candidates.len() as u64 {
            self.walk(query, |slot| {
                candidates.binary_search(&slot).is_ok() && listed(slot) && also(slot)
            })
        } else {
            let mut member = vec![0u64; self.entries.len().div_ceil(64)];
            for &slot in candidates.iter() {
                member[slot as usize / 64] |= 1 << (slot % 64);
            }
            self.walk(query, |slot| {
                member[slot as usize / 64] & (1 << (slot % 64)) != 0 && listed(slot) && also(slot)
            })
        };
        Some(Page {
            items,
            total,
            total_exact,
        })
    }

    /// The page of the visible entries that `keep`, in the query's sort.
    fn walk(&self, query: &LoraQuery, keep: impl Fn(u32) -> bool) -> Vec<u32> {
        let slots: Box<dyn Iterator<Item = u32> + '_> = match query.sort {
            LoraSort::Popular => Box::new(self.popular.values().copied()),
            LoraSort::Recent => Box::new(self.recent.values().copied()),
            LoraSort::Name => Box::new(self.by_name.values().copied()),
        };
        slots
            .filter(|&slot| keep(slot))
            .skip(usize::try_from(query.offset).unwrap_or(usize::MAX))
            .take(query.limit as usize)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraforge_domain::{CreatorRef, Hidden, UserId};

    fn lora(name: &str, description: Option<&str>, uses: u64, minute: i64) -> LoraSummary {
        LoraSummary {
            id: LoraId::new(),
            name: name.to_owned(),
            description: description.map(str::to_owned),
            status: TrainingStatus::Completed,
            creator: CreatorRef {
                id: UserId::new(),
                email: None,
                display_name: None,
            },
            usage_count: uses,
            created_at: DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap(),
            character_id: None,
            triggered_by_job_id: None,
            hidden: None,
        }
    }

    fn search(index: &LibraryIndex, words: &str, sort: LoraSort) -> (Vec<String>, u64, bool) {
        let page = index
            .query(&LoraQuery {
                search: Some(words.to_owned()),
                sort,
                limit: 50,
                ..LoraQuery::default()
            })
            .unwrap();
        (
            page.items.into_iter().map(|s| s.name).collect(),
            page.total,
            page.total_exact,
        )
    }

    #[test]
    fn words_are_prefixes_in_name_or_description_and_all_must_match() {
        let mut index = LibraryIndex::default();
        index.apply(lora("Cyber Girl", Some("neon city"), 5, 0));
        index.apply(lora("cyberpunk alley", None, 9, 1));
        index.apply(lora("Forest", Some("a cyber-fox"), 1, 2));
        assert_eq!(
            search(&index, "cyb", LoraSort::Popular),
            (
                vec![
                    "cyberpunk alley".into(),
                    "Cyber Girl".into(),
                    "Forest".into()
                ],
                3,
                true
            )
        );
        assert_eq!(
            search(&index, "CYBER ne", LoraSort::Recent).0,
            ["Cyber Girl"]
        );
        assert_eq!(search(&index, "fox cyber", LoraSort::Name).0, ["Forest"]);
        assert_eq!(search(&index, "girls", LoraSort::Name).1, 0);
    }

    #[test]
    fn changes_move_an_entry_and_hidden_ones_leave_the_library() {
        let mut index = LibraryIndex::default();
        let mut a = lora("alpha", None, 1, 0);
        index.apply(a.clone());
        index.apply(lora("alpine", None, 2, 1));
        assert_eq!(
            search(&index, "al", LoraSort::Popular).0,
            ["alpine", "alpha"]
        );
        a.usage_count = 5;
        index.apply(a.clone());
        assert_eq!(
            search(&index, "al", LoraSort::Popular).0,
            ["alpha", "alpine"]
        );
        a.name = "beta".into();
        index.apply(a.clone());
        assert_eq!(search(&index, "al", LoraSort::Popular).0, ["alpine"]);
        assert_eq!(search(&index, "be", LoraSort::Popular).0, ["beta"]);
        a.hidden = Some(Hidden {
            at: a.created_at,
            reason: "spam".into(),
            by: UserId::new(),
        });
        index.apply(a);
        assert_eq!(search(&index, "be", LoraSort::Popular).1, 0);
        let all = index.query(&LoraQuery {
            limit: 10,
            ..LoraQuery::default()
        });
        assert_eq!(all.map(|p| p.total), Some(1));
    }

    #[test]
    fn many_matches_are_capped_and_walked_in_order() {
        let mut index = LibraryIndex::default();
        let n = SEARCH_TOTAL_CAP as i64 + 30;
        for i in 0..n {
            index.apply(lora(&format!("shade {i}"), None, (i % 7) as u64, i));
        }
        index.apply(lora("other", None, 100, n));
        let page = index
            .query(&LoraQuery {
                search: Some("sh".into()),
                sort: LoraSort::Popular,
                limit: 5,
                offset: 1_020,
                ..LoraQuery::default()
            })
            .unwrap();
        assert_eq!((page.total, page.total_exact), (SEARCH_TOTAL_CAP, false));
        let mut expected: Vec<(u64, i64)> = (0..n).map(|i| ((i % 7) as u64, i)).collect();
        expected.sort_by_key(|&(u, i)| (Reverse(u), Reverse(i)));
        let names: Vec<String> = expected[1_020..1_025]
            .iter()
            .map(|(_, i)| format!("shade {i}"))
            .collect();
        assert_eq!(
            page.items
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            names
        );
    }

    #[test]
    fn a_lora_read_again_unchanged_is_not_rendered_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let renders = Arc::new(AtomicUsize::new(0));
        let counted = renders.clone();
        let mut index = LibraryIndex::with_renderer(Arc::new(move |s: &LoraSummary| {
            counted.fetch_add(1, Ordering::Relaxed);
            s.name.clone().into_bytes()
        }));
        let a = lora("Cyber Girl", Some("neon"), 5, 0);
        index.apply(a.clone());
        index.apply(a.clone());
        assert_eq!(renders.load(Ordering::Relaxed), 1);
        let renamed = LoraSummary {
            name: "Cyber Woman".into(),
            ..a.clone()
        };
        index.apply(renamed.clone());
        index.apply(renamed);
        assert_eq!(renders.load(Ordering::Relaxed), 2);
        assert_eq!(
            search(&index, "woman", LoraSort::Popular).0,
            vec!["Cyber Woman".to_owned()]
        );
        assert_eq!(search(&index, "girl", LoraSort::Popular).1, 0);
        let page = index
            .query_rendered(&LoraQuery {
                limit: 50,
                ..LoraQuery::default()
            })
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(&page.items[0][..], b"Cyber Woman");
    }

    #[test]
    fn listings_it_does_not_serve_are_left_to_the_database() {
        let index = LibraryIndex::default();
        for q in [
            LoraQuery {
                include_hidden: true,
                ..LoraQuery::default()
            },
            LoraQuery {
                creator: Some(UserId::new()),
                ..LoraQuery::default()
            },
            LoraQuery {
                awaiting_review: true,
                ..LoraQuery::default()
            },
            LoraQuery {
                character_id: Some("c".into()),
                ..LoraQuery::default()
            },
        ] {
            assert!(index.query(&q).is_none());
        }
    }
}
