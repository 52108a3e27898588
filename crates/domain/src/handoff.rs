//! The generator's hand-off (PRD 1 "Data Flow", "LoRA Selector", Decision 8; PRD 2 Scenarios 7
//! and 8): at the start of a generation the video generator asks, per character, which LoRA to
//! use. The answer is a LoRA ready to download, or "use your reference images" with a stable
//! reason. A LoRA problem never fails the generation: every per-character problem is a
//! [`FallbackReason`]. These are the rules; the server does the lookups and the file checks.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{LoraModel, TrainingParams, TrainingStatus};

/// Characters per resolve request.
pub const MAX_CHARACTERS: usize = 50;
/// Reference image URLs per character.
pub const MAX_REFERENCE_IMAGES: usize = 50;
/// Characters of one reference image URL.
pub const MAX_URL_CHARS: usize = 2048;

/// PRD 1's "User Notice" for a character whose LoRA is still training.
pub const TRAINING_NOTICE: &str = "LoRA training in progress. Video will use reference images. \
                                   You can regenerate with LoRA once training completes.";

/// A completed LoRA's file missing on two checks at least this far apart (by the injected clock)
/// is missing for good: the LoRA is failed. One miss alone may be a store that is catching up
/// (an S3 replica, a restore in progress), so it only falls back and alerts.
pub const MISSING_FOR_GOOD_AFTER: Duration = Duration::minutes(10);

/// The reason written on a LoRA failed because its file is gone for good.
pub const FILE_GONE_ERROR: &str = "its file is gone from storage";

/// Why a character gets reference images instead of a LoRA. The snake_case names are the API's
/// stable `reason` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// No LoRA was named and the character has no completed LoRA.
    NoLora,
    /// The LoRA is pending, queued, training or validating.
    Training,
    Failed,
    Cancelled,
    /// The named LoRA id does not exist.
    NotFound,
    /// The LoRA is completed but its file is not in storage.
    FileMissing,
    /// An admin hid the LoRA from the library (moderation): it is not handed out to anyone.
    Hidden,
    /// The blob store errored while checking the file: fall back, try again next generation.
    StorageUnavailable,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 8] = [
        FallbackReason::NoLora,
        FallbackReason::Training,
        FallbackReason::Failed,
        FallbackReason::Cancelled,
        FallbackReason::NotFound,
        FallbackReason::FileMissing,
        FallbackReason::Hidden,
        FallbackReason::StorageUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::NoLora => "no_lora",
            FallbackReason::Training => "training",
            FallbackReason::Failed => "failed",
            FallbackReason::Cancelled => "cancelled",
            FallbackReason::NotFound => "not_found",
            FallbackReason::FileMissing => "file_missing",
            FallbackReason::Hidden => "hidden",
            FallbackReason::StorageUnavailable => "storage_unavailable",
        }
    }

    /// The text the generator shows people, where PRD 1 defines one.
    pub fn notice(self) -> Option<&'static str> {
        match self {
            FallbackReason::Training => Some(TRAINING_NOTICE),
            _ => None,
        }
    }
}

/// What the status and record of a LoRA allow, before its file is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Completed with a stored file: check that the file is there, then hand it out.
    CheckFile {
        storage_key: String,
    },
    Fallback(FallbackReason),
}

/// The verdict on `lora` (`None`: not found). `named`: the request named a LoRA id (an unknown
/// id is `not_found`); otherwise the lookup was by character (nothing is `no_lora`).
pub fn verdict(lora: Option<&LoraModel>, named: bool) -> Verdict {
    let Some(lora) = lora else {
        return Verdict::Fallback(if named {
            FallbackReason::NotFound
        } else {
            FallbackReason::NoLora
        });
    };
    if lora.is_hidden() {
        return Verdict::Fallback(FallbackReason::Hidden);
    }
    let reason = match lora.status {
        TrainingStatus::Pending
        | TrainingStatus::Queued
        | TrainingStatus::Training
        | TrainingStatus::Validating => FallbackReason::Training,
        TrainingStatus::Failed => FallbackReason::Failed,
        TrainingStatus::Cancelled => FallbackReason::Cancelled,
        TrainingStatus::Completed => match &lora.storage_key {
            Some(key) => {
                return Verdict::CheckFile {
                    storage_key: key.clone(),
                };
            }
            // Completed without a file should not happen; the generator must not get a link.
            None => FallbackReason::FileMissing,
        },
    };
    Verdict::Fallback(reason)
}

/// What a missing file means now, given when it was first found missing (`first_miss`, as
/// stored, `now` when this is the first miss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingFile {
    /// Fall back and alert; the LoRA stays completed.
    FirstMiss,
    /// Missing on checks at least [`MISSING_FOR_GOOD_AFTER`] apart: fail the LoRA.
    GoneForGood,
}

pub fn missing_file(first_miss: DateTime<Utc>, now: DateTime<Utc>) -> MissingFile {
    if now - first_miss >= MISSING_FOR_GOOD_AFTER {
        MissingFile::GoneForGood
    } else {
        MissingFile::FirstMiss
    }
}

/// The LoRA weight the generator should apply: always 1.0.
///
/// Why not alpha/rank: the trainer saves diffusers/PEFT adapters whose `lora_alpha` and `r` are
/// in the adapter config, and loaders (diffusers `load_lora_weights`, kohya) already scale the
/// update by alpha/rank. Multiplying by alpha/rank again would apply it twice (a default run,
/// alpha 32 / rank 8, would be 4× too strong). 1.0 is "the strength it was trained at"; a
/// generator may lower it to mix several LoRAs.
pub fn recommended_scale(_params: &TrainingParams) -> f64 {
    1.0
}

/// A lowercase 64-digit hex sha256, as the worker reports and the resolve hands out.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The sha256 a worker reported for a file, if it can stand for the stored file: the worker
/// hashed the file before uploading it, so its hash is trusted when the stored file has the size
/// the worker reported and the hash is well formed. `None`: hash the stored file.
pub fn reported_sha256(reported: &crate::FileFacts, stored_bytes: u64) -> Option<&str> {
    reported
        .sha256
        .as_deref()
        .filter(|s| reported.bytes == stored_bytes && is_sha256_hex(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreatorRef, DatasetId, LoraId, MicroUsd, Progress, UserId};

    fn lora(status: TrainingStatus, key: Option<&str>) -> LoraModel {
        let now = Utc::now();
        LoraModel {
            id: LoraId::new(),
            name: "x".into(),
            description: None,
            creator: CreatorRef {
                id: UserId::new(),
                email: None,
                display_name: None,
            },
            status,
            dataset_id: DatasetId::new(),
            params: TrainingParams::default(),
            progress: Progress::default(),
            error: None,
            usage_count: 0,
            storage_key: key.map(Into::into),
            file_size: None,
            validation_image_keys: Vec::new(),
            validation_passed: None,
            validation_scores: None,
            training_cost: MicroUsd(0),
            status_message: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            character_id: None,
            triggered_by_job_id: None,
            sha256: None,
            file_missing_since: None,
            hidden: None,
        }
    }

    #[test]
    fn every_status_has_one_verdict() {
        use TrainingStatus as S;
        for s in S::ALL {
            let got = verdict(Some(&lora(s, Some("k"))), true);
            let want = match s {
                S::Pending | S::Queued | S::Training | S::Validating => {
                    Verdict::Fallback(FallbackReason::Training)
                }
                S::Failed => Verdict::Fallback(FallbackReason::Failed),
                S::Cancelled => Verdict::Fallback(FallbackReason::Cancelled),
                S::Completed => Verdict::CheckFile {
                    storage_key: "k".into(),
                },
            };
            assert_eq!(got, want, "{s}");
        }
        assert_eq!(
            verdict(Some(&lora(S::Completed, None)), false),
            Verdict::Fallback(FallbackReason::FileMissing)
        );
    }

    #[test]
    fn nothing_found_is_not_found_when_named_and_no_lora_otherwise() {
        assert_eq!(
            verdict(None, true),
            Verdict::Fallback(FallbackReason::NotFound)
        );
        assert_eq!(
            verdict(None, false),
            Verdict::Fallback(FallbackReason::NoLora)
        );
    }

    #[test]
    fn reasons_are_stable_snake_case_and_only_training_has_a_notice() {
        for r in FallbackReason::ALL {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::String(r.as_str().into())
            );
            assert_eq!(r.notice().is_some(), r == FallbackReason::Training);
        }
        assert_eq!(
            FallbackReason::Training.notice(),
            Some(
                "LoRA training in progress. Video will use reference images. You can regenerate with LoRA once training completes."
            )
        );
    }

    #[test]
    fn a_file_is_gone_for_good_after_two_misses_ten_minutes_apart() {
        let t0: DateTime<Utc> = "2026-11-30T00:00:00Z".parse().unwrap();
        assert_eq!(missing_file(t0, t0), MissingFile::FirstMiss);
        assert_eq!(
            missing_file(t0, t0 + Duration::seconds(599)),
            MissingFile::FirstMiss
        );
        assert_eq!(
            missing_file(t0, t0 + Duration::minutes(10)),
            MissingFile::GoneForGood
        );
    }

    #[test]
    fn scale_is_one_whatever_alpha_and_rank() {
        let mut p = TrainingParams::default();
        assert_eq!(recommended_scale(&p), 1.0);
        p.alpha = 1;
        p.rank = 128;
        assert_eq!(recommended_scale(&p), 1.0);
    }

    #[test]
    fn sha256_hex_is_64_lowercase_hex_digits() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex(&"g".repeat(64)));
    }

    #[test]
    fn a_reported_hash_stands_for_the_file_only_at_its_size_and_well_formed() {
        let sha = "ab".repeat(32);
        let facts = |sha256: Option<&str>| crate::FileFacts {
            bytes: 10,
            sha256: sha256.map(str::to_owned),
        };
        assert_eq!(reported_sha256(&facts(Some(&sha)), 10), Some(sha.as_str()));
        assert_eq!(
            reported_sha256(&facts(Some(&sha)), 11),
            None,
            "another size"
        );
        assert_eq!(reported_sha256(&facts(Some(&sha.to_uppercase())), 10), None);
        assert_eq!(reported_sha256(&facts(Some("abc")), 10), None);
        assert_eq!(reported_sha256(&facts(None), 10), None);
    }
}
