//! The search index's terms: one rule, in Rust, for both engines (migration 0008).
//!
//! A search box sends prefixes ("ba", "bam", "bami", …) and wants the best page of matches by
//! popularity or recency. Full-text indexes (FTS5, GIN) find the matches but not their order, so
//! every match had to be fetched and sorted, and a two-letter prefix matches a third of the
//! library (docs/performance.md, issue 9). `lora_search_terms` keeps one entry per (term, LoRA)
//! with the LoRA's sort keys, indexed in each sort order: a page is the first `offset + limit`
//! entries of one term, and a count stops after `SEARCH_TOTAL_CAP + 1` entries, whatever the
//! library's size (what search engines call edge n-grams, e.g. Elasticsearch's `index_prefixes`).
//!
//! Terms of a LoRA: every word of its name and description (runs of letters and digits,
//! lowercased — the same words [`crate::common::search_words`] makes of a query) gives its first
//! 2 and 3 characters, and a word longer than 3 characters also gives itself (cut at
//! [`MAX_TERM_CHARS`]); those whole words are also kept in `lora_search_words`. A query word of
//! 2–3 characters is one term; a longer one stands for every indexed word it begins (usually one
//! or two), whose entries are merged. Anything else — one-letter words, words longer than
//! [`MAX_TERM_CHARS`], more than [`MAX_EXPANSION`] words under one prefix, filters, sorting by
//! name — is answered by the full-text index as before.

use std::collections::BTreeSet;

use loraforge_domain::LoraSort;

use crate::LoraQuery;

/// Rows whose `search_terms_version` is below this have no (or outdated) entries; the engines
/// index them in the transaction that writes them, and at start (rows an older build wrote).
pub(crate) const TERMS_VERSION: i64 = 1;

/// The prefix lengths stored for every word, in characters.
const PREFIX_CHARS: [usize; 2] = [2, 3];

/// Whole words are stored cut at this many characters (a B-tree entry must stay small); a query
/// word longer than this goes to the full-text index.
pub(crate) const MAX_TERM_CHARS: usize = 64;

/// A query word longer than 3 characters that begins more indexed words than this goes to the
/// full-text index (merging that many ordered lists would cost more than the sort).
pub(crate) const MAX_EXPANSION: usize = 32;

/// What [`index_terms`] makes of one LoRA.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct IndexTerms {
    /// Its entries in `lora_search_terms`.
    pub terms: BTreeSet<String>,
    /// Its words longer than 3 characters (cut at [`MAX_TERM_CHARS`]), for `lora_search_words`.
    pub words: BTreeSet<String>,
}

/// The terms of a LoRA's name and description (see the module's doc).
pub(crate) fn index_terms(name: &str, description: Option<&str>) -> IndexTerms {
    let mut out = IndexTerms::default();
    for text in [Some(name), description].into_iter().flatten() {
        for word in text.split(|c: char| !c.is_alphanumeric()) {
            if word.is_empty() {
                continue;
            }
            let word = word.to_lowercase();
            let chars = word.chars().count();
            for n in PREFIX_CHARS {
                if chars >= n {
                    out.terms.insert(prefix(&word, n).to_owned());
                }
            }
            if chars > PREFIX_CHARS[PREFIX_CHARS.len() - 1] {
                let whole = prefix(&word, MAX_TERM_CHARS).to_owned();
                out.terms.insert(whole.clone());
                out.words.insert(whole);
            }
        }
    }
    out
}

/// How one query word (from `search_words`) is looked up in the terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WordLookup {
    /// 2–3 characters: the word is itself a term.
    Term(String),
    /// Longer: every indexed word it begins (`lora_search_words` from the word up to
    /// [`prefix_end`]) is a term; at most [`MAX_EXPANSION`].
    Expand(String),
}

/// How `word` is looked up, or `None` when the terms cannot answer it (the full-text index does).
pub(crate) fn lookup(word: &str) -> Option<WordLookup> {
    match word.chars().count() {
        0 | 1 => None,
        2 | 3 => Some(WordLookup::Term(word.to_owned())),
        n if n <= MAX_TERM_CHARS => Some(WordLookup::Expand(word.to_owned())),
        _ => None,
    }
}

/// The first string after every string that begins with `prefix`, in byte order (SQLite's
/// BINARY collation, Postgres' "C"): no word holds U+10FFFF, which is not alphanumeric.
pub(crate) fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// A search the terms answer: every query word with its terms, the driving word first (its
/// terms' entries are walked in the sort order; the others are looked up per entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TermSearch {
    words: Vec<Vec<String>>,
}

impl TermSearch {
    /// Whether the terms can answer this listing at all: no filter (a status or creator filter
    /// would skip entries without bound) and a sort the terms are kept in.
    pub(crate) fn answers(query: &LoraQuery) -> bool {
        query.status.is_none() && query.creator.is_none() && query.sort != LoraSort::Name
    }

    /// From each query word and its terms; the longest word (the most selective, as a rule)
    /// drives.
    pub(crate) fn new(per_word: Vec<(&str, Vec<String>)>) -> Self {
        let driving = per_word
            .iter()
            .enumerate()
            .max_by_key(|(i, (w, _))| (w.chars().count(), std::cmp::Reverse(*i)))
            .map_or(0, |(i, _)| i);
        let mut words: Vec<Vec<String>> = per_word.into_iter().map(|(_, t)| t).collect();
        if !words.is_empty() {
            words.swap(0, driving);
        }
        Self { words }
    }

    /// The driving word's terms; empty when some word has no term (nothing matches).
    pub(crate) fn driving(&self) -> &[String] {
        if self.words.iter().any(Vec::is_empty) {
            return &[];
        }
        self.words.first().map_or(&[], Vec::as_slice)
    }

    /// The other words' terms (a LoRA must have one of each).
    pub(crate) fn others(&self) -> impl Iterator<Item = &Vec<String>> {
        self.words.iter().skip(1)
    }
}

/// The first `n` characters of `s` (all of it when shorter).
fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_word_gives_its_short_prefixes_and_itself() {
        let t = index_terms("Cyber Girl", Some("a neon-lit CITY, by x2"));
        assert_eq!(
            t.terms,
            set(&[
                "cy", "cyb", "cyber", "gi", "gir", "girl", "ne", "neo", "neon", "li", "lit", "ci",
                "cit", "city", "by", "x2"
            ])
        );
        assert_eq!(t.words, set(&["cyber", "girl", "neon", "city"]));
        assert_eq!(index_terms("x", None), IndexTerms::default());
    }

    #[test]
    fn prefixes_count_characters_not_bytes() {
        let t = index_terms("猫の騎士 Éclair", None);
        assert_eq!(
            t.terms,
            set(&["猫の", "猫の騎", "猫の騎士", "éc", "écl", "éclair"])
        );
    }

    #[test]
    fn long_words_are_cut() {
        let long = "a".repeat(100);
        let t = index_terms(&long, None);
        assert_eq!(t.words, set(&[&"a".repeat(MAX_TERM_CHARS)]));
        assert_eq!(t.terms.len(), 3);
    }

    #[test]
    fn query_words_by_length() {
        assert_eq!(lookup("a"), None);
        assert_eq!(lookup("ba"), Some(WordLookup::Term("ba".into())));
        assert_eq!(lookup("bam"), Some(WordLookup::Term("bam".into())));
        assert_eq!(lookup("bami"), Some(WordLookup::Expand("bami".into())));
        assert_eq!(lookup(&"a".repeat(MAX_TERM_CHARS + 1)), None);
        assert!(prefix_end("bam").as_str() > "bamzzzz");
        assert!(prefix_end("bam").as_str() < "ban");
    }

    #[test]
    fn the_longest_word_drives() {
        let s = TermSearch::new(vec![
            ("ba", vec!["ba".into()]),
            ("bamith", vec!["bamith".into()]),
            ("kor", vec!["kor".into()]),
        ]);
        assert_eq!(s.driving(), ["bamith"]);
        assert_eq!(s.others().count(), 2);
        let none = TermSearch::new(vec![("ba", vec!["ba".into()]), ("bamix", vec![])]);
        assert!(none.driving().is_empty());
    }
}
