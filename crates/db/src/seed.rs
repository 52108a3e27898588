//! A deterministic, fast way to fill a library for benchmarks and demos: `n` LoRAs spread over
//! `users` owners, named and described from a vocabulary of made-up words so that any one word
//! matches a few hundred rows of a 100,000-row library. Goes through the public trait only
//! ([`Repository::insert_dataset`] and [`Repository::bulk_insert_library`]).

use std::collections::HashSet;

use chrono::{DateTime, Duration, TimeZone, Utc};

use loraforge_domain::{
    Dataset, DatasetId, DatasetImage, ImageFormat, LoraId, LoraName, TrainingParams,
    TrainingStatus, UserId,
};

use crate::common::corrupt;
use crate::{LibraryRow, Repository, Result};

/// Words in the vocabulary.
pub const VOCABULARY_SIZE: usize = 2_000;
/// Rows handed to one `bulk_insert_library` call (one transaction each).
const BATCH: usize = 10_000;

/// What [`seed_library`] made.
#[derive(Debug, Clone)]
pub struct SeededLibrary {
    pub users: Vec<UserId>,
    pub loras: usize,
    /// The words names and descriptions were made of, lowercase.
    pub vocabulary: Vec<String>,
}

/// splitmix64: tiny, fast and good enough to spread names and counts.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// [`VOCABULARY_SIZE`] distinct pronounceable lowercase words (two or three syllables, no word a
/// prefix of another), the same for the same seed.
pub fn vocabulary(seed: u64) -> Vec<String> {
    const ONSETS: [&str; 16] = [
        "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "tr",
    ];
    const VOWELS: [&str; 5] = ["a", "e", "i", "o", "u"];
    let mut rng = Rng(seed ^ 0x5EED);
    let mut seen = HashSet::new();
    let mut words = Vec::with_capacity(VOCABULARY_SIZE);
    while words.len() < VOCABULARY_SIZE {
        // Ending every word in a consonant cluster ("x", "q", "th") that no syllable starts with
        // keeps any word from being a prefix of another.
        let mut w = String::new();
        for _ in 0..2 + rng.below(2) {
            w.push_str(ONSETS[rng.below(ONSETS.len())]);
            w.push_str(VOWELS[rng.below(VOWELS.len())]);
        }
        w.push_str(["x", "q", "th"][rng.below(3)]);
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

fn capitalized(w: &str) -> String {
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The instant the seeded library's clock starts; rows are spread over the 365 days before it.
pub fn seed_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// Inserts `n` LoRAs owned by `users` users (one dataset each), deterministically from `seed`.
/// Statuses are mostly `completed`; usage counts are skewed so "popular" has a clear head.
pub async fn seed_library(
    repo: &dyn Repository,
    n: usize,
    users: usize,
    seed: u64,
) -> Result<SeededLibrary> {
    let vocab = vocabulary(seed);
    let mut rng = Rng(seed);
    let epoch = seed_epoch();
    let owners: Vec<UserId> = (0..users.max(1))
        .map(|_| UserId(uuid::Uuid::from_u64_pair(rng.next(), rng.next())))
        .collect();
    let mut datasets = Vec::with_capacity(owners.len());
    for (i, owner) in owners.iter().enumerate() {
        let dataset = Dataset {
            id: DatasetId(uuid::Uuid::from_u64_pair(rng.next(), rng.next())),
            user_id: *owner,
            images: vec![DatasetImage {
                index: 0,
                file_name: format!("seed-{i}.png"),
                format: ImageFormat::Png,
                width: 1024,
                height: 1024,
                bytes: 200_000,
                content_hash: format!("{:016x}{:016x}", rng.next(), rng.next()),
                storage_key: format!("seed/{i}/0.png"),
                caption: None,
            }],
            created_at: epoch - Duration::days(366),
        };
        repo.insert_dataset(&dataset).await?;
        datasets.push(dataset.id);
    }

    let params = TrainingParams::default();
    let mut names: HashSet<(usize, String)> = HashSet::new();
    let mut batch = Vec::with_capacity(BATCH.min(n));
    for i in 0..n {
        let owner = rng.below(owners.len());
        let mut name = format!(
            "{} {}",
            capitalized(&vocab[rng.below(vocab.len())]),
            capitalized(&vocab[rng.below(vocab.len())])
        );
        if !names.insert((owner, name.clone())) {
            name = format!("{name} {i}");
            names.insert((owner, name.clone()));
        }
        let description = (0..6)
            .map(|_| vocab[rng.below(vocab.len())].as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let status = match rng.below(20) {
            0 => TrainingStatus::Failed,
            1 => TrainingStatus::Training,
            2 => TrainingStatus::Queued,
            _ => TrainingStatus::Completed,
        };
        // Skewed: most counts small, a few in the tens of thousands.
        let r = rng.below(1_000) as u64;
        let usage_count = r * r * r / 20_000;
        let created_at = epoch - Duration::seconds(rng.below(365 * 24 * 3600) as i64);
        batch.push(LibraryRow {
            id: LoraId(uuid::Uuid::from_u64_pair(rng.next(), rng.next())),
            owner: owners[owner],
            owner_email: Some(format!("user{owner}@example.com")),
            name: LoraName::parse(&name).map_err(corrupt)?,
            description: Some(description),
            dataset_id: datasets[owner],
            params: params.clone(),
            status,
            usage_count,
            created_at,
        });
        if batch.len() == BATCH {
            repo.bulk_insert_library(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        repo.bulk_insert_library(batch).await?;
    }
    Ok(SeededLibrary {
        users: owners,
        loras: n,
        vocabulary: vocab,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_deterministic_distinct_and_prefix_free() {
        let v = vocabulary(7);
        assert_eq!(v, vocabulary(7));
        assert_eq!(v.len(), VOCABULARY_SIZE);
        let set: HashSet<&str> = v.iter().map(String::as_str).collect();
        assert_eq!(set.len(), v.len());
        for w in &v {
            assert!(w.chars().all(|c| c.is_ascii_lowercase()));
        }
        let mut sorted = v.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            assert!(
                !pair[1].starts_with(&pair[0]),
                "{} is a prefix of {}",
                pair[0],
                pair[1]
            );
        }
    }
}
