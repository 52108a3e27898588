//! Dataset-level checks: per-image checks in parallel, then the image count, exact duplicates
//! (same blake3) and near-duplicates (close perceptual hashes).

use std::collections::HashMap;

use loraforge_domain::DatasetRules;
use rayon::prelude::*;
use serde::Serialize;

use super::{ImageReport, UNLIMITED, check_image_within};
use crate::budget::DecodeBudget;
use crate::problem::Problem;

/// Two images whose 64-bit difference hashes differ in at most this many bits are reported as
/// near-duplicates. Re-encoded, resized or lightly retouched copies of one photo typically
/// differ in 0–6 bits; unrelated photos differ in about 32.
pub const NEAR_DUPLICATE_MAX_DISTANCE: u32 = 10;

/// One uploaded file as the caller received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputImage {
    /// The user's file name, for messages only.
    pub file_name: String,
    pub bytes: Vec<u8>,
}

impl InputImage {
    pub fn new(file_name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            file_name: file_name.into(),
            bytes: bytes.into(),
        }
    }
}

/// The outcome for a whole upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetReport {
    /// One report per input file, in input order.
    pub images: Vec<ImageReport>,
    /// Problems with the set as a whole (count).
    pub errors: Vec<Problem>,
    /// Advice that does not block training (near-duplicates).
    pub warnings: Vec<Problem>,
    /// True when neither the set nor any image has an error.
    pub accepted: bool,
}

/// Checks every image (in parallel) and then the set, without a decode budget. CPU-bound: call
/// it off async threads.
pub fn check_dataset(files: &[InputImage], rules: &DatasetRules) -> DatasetReport {
    check_dataset_within(files, rules, &UNLIMITED)
}

/// Checks every image (in parallel, each decode within `budget`) and then the set. CPU-bound and
/// may wait for the budget: call it off async threads.
pub fn check_dataset_within(
    files: &[InputImage],
    rules: &DatasetRules,
    budget: &DecodeBudget,
) -> DatasetReport {
    let mut images: Vec<ImageReport> = files
        .par_iter()
        .map(|f| check_image_within(&f.file_name, &f.bytes, rules, budget))
        .collect();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    let n = files.len();
    if n < rules.min_images {
        let missing = rules.min_images - n;
        let uploaded = if n == 1 {
            "1 was uploaded".to_owned()
        } else {
            format!("{n} were uploaded")
        };
        errors.push(Problem::new(
            "too_few_images",
            format!(
                "{} images are required, {uploaded}; add at least {missing} more",
                rules.min_images
            ),
        ));
    } else if n > rules.max_images {
        let extra = n - rules.max_images;
        errors.push(Problem::new(
            "too_many_images",
            format!(
                "at most {} images are allowed, {n} were uploaded; remove at least {extra}",
                rules.max_images
            ),
        ));
    }

    // Exact duplicates: the error goes on the later file and names the first one.
    let mut first_with_hash: HashMap<&str, usize> = HashMap::new();
    let mut duplicate_of: Vec<Option<usize>> = vec![None; n];
    for (i, img) in images.iter().enumerate() {
        match first_with_hash.get(img.content_hash.as_str()) {
            Some(&j) => duplicate_of[i] = Some(j),
            None => {
                first_with_hash.insert(img.content_hash.as_str(), i);
            }
        }
    }
    for (i, dup) in duplicate_of.iter().enumerate() {
        if let Some(j) = *dup {
            let msg = format!(
                "{} is the same file as {}; remove one of them",
                images[i].file_name, images[j].file_name
            );
            images[i].errors.push(Problem::new("exact_duplicate", msg));
        }
    }

    // Near-duplicates among the distinct files that decoded.
    let hashes: Vec<(usize, u64)> = images
        .iter()
        .enumerate()
        .filter(|(i, _)| duplicate_of[*i].is_none())
        .filter_map(|(i, img)| Some((i, img.perceptual_hash_bits()?)))
        .collect();
    for (a, &(i, hi)) in hashes.iter().enumerate() {
        for &(j, hj) in &hashes[a + 1..] {
            if (hi ^ hj).count_ones() <= NEAR_DUPLICATE_MAX_DISTANCE {
                let msg = format!(
                    "{} looks almost the same as {}; consider keeping only one — varied photos train a better LoRA",
                    images[j].file_name, images[i].file_name
                );
                warnings.push(Problem::new("near_duplicate", msg));
            }
        }
    }

    let accepted = errors.is_empty() && images.iter().all(ImageReport::ok);
    DatasetReport {
        images,
        errors,
        warnings,
        accepted,
    }
}
