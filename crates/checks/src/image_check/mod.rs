//! Training-image checks (PRD 2, "Dataset Validation"): each file on its own — size window,
//! format by content, header dimensions against the pixel limit *before* any decoding, minimum
//! side after EXIF orientation, full decode as the integrity proof — then the set as a whole:
//! image count, exact duplicates and near-duplicates.

mod dataset;
mod decode;
mod jpeg_scan;
pub(crate) mod sniff;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_budget;
#[cfg(test)]
mod tests_dataset;
#[cfg(test)]
mod tests_declared;
#[cfg(test)]
pub(crate) mod testutil;

use loraforge_domain::{DatasetRules, ImageFormat};
use serde::Serialize;

pub use dataset::{
    DatasetReport, InputImage, NEAR_DUPLICATE_MAX_DISTANCE, check_dataset, check_dataset_within,
};

use crate::budget::{BudgetError, DecodeBudget};
use crate::problem::{Problem, format_bytes, format_megapixels};

/// The code of an image that could not be checked because other decodes held the decode budget
/// for too long: the server's load, not the image's fault (the server answers 503).
pub const DECODE_BUSY: &str = "decode_busy";

/// Checks without a decode budget: for one's own files on the command line, and tests.
static UNLIMITED: DecodeBudget = DecodeBudget::unlimited();

/// Memory a full check of `bytes` holds at its peak, from its header alone; `None` when it is
/// not a supported image or its header cannot be read.
pub fn decode_cost(bytes: &[u8]) -> Option<u64> {
    let format = sniff::sniff_format(bytes)?;
    let dims = sniff::header_dimensions(format, bytes).ok()?;
    Some(sniff::decoded_bytes(format, bytes, dims))
}

/// The outcome for one uploaded file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageReport {
    /// The name the user gave the file; used only in messages, never to guess the format.
    pub file_name: String,
    /// Format found from the content's magic bytes; `None` when it is not a supported image.
    pub format: Option<ImageFormat>,
    /// Upright width in pixels (after EXIF orientation). For images refused before decoding
    /// (too many pixels), the stored width from the header.
    pub width: Option<u32>,
    /// Upright height in pixels; see `width`.
    pub height: Option<u32>,
    /// EXIF orientation, 1–8; 1 when the file has none.
    pub orientation: u8,
    /// File size in bytes.
    pub bytes: u64,
    /// blake3 of the file bytes, lowercase hex; equal hashes are exact duplicates.
    pub content_hash: String,
    /// 64-bit difference hash of the upright pixels, 16 hex digits; set when the image decoded.
    pub perceptual_hash: Option<String>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl ImageReport {
    /// Whether this image may be trained on.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub(crate) fn perceptual_hash_bits(&self) -> Option<u64> {
        u64::from_str_radix(self.perceptual_hash.as_deref()?, 16).ok()
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Webp => "WebP",
    }
}

/// Checks one file without a decode budget. Never panics; every problem found is in the report.
pub fn check_image(file_name: &str, bytes: &[u8], rules: &DatasetRules) -> ImageReport {
    check_image_within(file_name, bytes, rules, &UNLIMITED)
}

/// Checks one file, decoding it only within `budget` (which it may wait for). Never panics;
/// every problem found is in the report.
pub fn check_image_within(
    file_name: &str,
    bytes: &[u8],
    rules: &DatasetRules,
    budget: &DecodeBudget,
) -> ImageReport {
    let size = bytes.len() as u64;
    let mut report = ImageReport {
        file_name: file_name.to_owned(),
        format: None,
        width: None,
        height: None,
        orientation: 1,
        bytes: size,
        content_hash: blake3::hash(bytes).to_hex().to_string(),
        perceptual_hash: None,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let name = file_name;
    let err = |r: &mut ImageReport, code, msg: String| r.errors.push(Problem::new(code, msg));

    // 1. Size window.
    if size == 0 {
        err(
            &mut report,
            "too_small_file",
            format!("{name} is empty (0 bytes); upload the image again"),
        );
        return report;
    }
    if size < rules.min_bytes {
        let msg = format!(
            "{name} is {}; images must be at least {} — upload the original photo, not a thumbnail or screenshot",
            format_bytes(size),
            format_bytes(rules.min_bytes)
        );
        err(&mut report, "too_small_file", msg);
    }
    let too_large = size > rules.max_bytes;
    if too_large {
        let msg = format!(
            "{name} is {}; images must be at most {} — export it at a lower quality",
            format_bytes(size),
            format_bytes(rules.max_bytes)
        );
        err(&mut report, "too_large_file", msg);
    }

    // 2. Format, from the content only.
    let (accepted, extensions) = if rules.allow_webp {
        ("a JPEG, PNG or WebP image", ".jpg, .png or .webp")
    } else {
        ("a JPEG or PNG image", ".jpg or .png")
    };
    let format = match sniff::sniff_format(bytes) {
        Some(ImageFormat::Webp) if !rules.allow_webp => {
            let msg = format!(
                "{name} is a WebP image; only JPEG and PNG images are accepted — convert it to .jpg or .png"
            );
            err(&mut report, "unsupported_format", msg);
            return report;
        }
        Some(f) => f,
        None => {
            let what = sniff::describe_content(bytes);
            let msg = format!(
                "{name} is not {accepted} (its content is {what}); upload a {extensions} photo"
            );
            err(&mut report, "unsupported_format", msg);
            return report;
        }
    };
    report.format = Some(format);
    let fname = format_name(format);
    let corrupt = |r: &mut ImageReport, reason: &str| {
        let msg = format!(
            "{name} could not be read as a {fname} image ({reason}); it may be damaged or incomplete — export it again and re-upload"
        );
        r.errors.push(Problem::new("corrupt_image", msg));
    };

    // 3. Dimensions from the header, before any decoder sees the file.
    let (w, h) = match sniff::header_dimensions(format, bytes) {
        Ok(d) => d,
        Err(e) => {
            corrupt(&mut report, &e.to_string());
            return report;
        }
    };

    // 4. Decompression bombs are refused here, without allocating.
    let pixels = u64::from(w) * u64::from(h);
    if pixels > rules.max_pixels {
        report.width = Some(w);
        report.height = Some(h);
        let msg = format!(
            "{name} is {w}×{h} ({} megapixels); images may have at most {} megapixels",
            format_megapixels(pixels),
            format_megapixels(rules.max_pixels)
        );
        err(&mut report, "too_many_pixels", msg);
        return report;
    }

    // 5. Orientation and full decode (skipped for files already refused as too large), within
    // the decode budget shared by every request.
    let _permit = if too_large {
        None
    } else {
        let cost = sniff::decoded_bytes(format, bytes, (w, h));
        match budget.acquire(cost) {
            Ok(permit) => Some(permit),
            Err(BudgetError::TooLarge { needed, total }) => {
                report.width = Some(w);
                report.height = Some(h);
                let msg = format!(
                    "{name} is {w}×{h} and needs {} of memory to check; this server checks images of at most {} — save it with fewer pixels or 8 bits per channel",
                    format_bytes(needed),
                    format_bytes(total)
                );
                err(&mut report, "too_large_to_decode", msg);
                return report;
            }
            Err(BudgetError::Busy) => {
                let msg = format!(
                    "{name} could not be checked now: the server is busy checking other images; try again in a minute"
                );
                err(&mut report, DECODE_BUSY, msg);
                return report;
            }
        }
    };
    let decoded = decode::decode(bytes, format, (w, h), !too_large);
    report.orientation = decoded.orientation;
    let (uw, uh) = if matches!(decoded.orientation, 5..=8) {
        (h, w)
    } else {
        (w, h)
    };
    report.width = Some(uw);
    report.height = Some(uh);

    // 6. Minimum side, upright.
    if uw.min(uh) < rules.min_side {
        let m = rules.min_side;
        err(
            &mut report,
            "too_small_dimensions",
            format!("{name} is {uw}×{uh}; images must be at least {m}×{m}"),
        );
    }

    // 7. Integrity.
    if !too_large {
        let complete = match format {
            ImageFormat::Jpeg => sniff::check_jpeg_complete(bytes).map_err(|e| e.to_string()),
            ImageFormat::Png => sniff::check_png_complete(bytes).map_err(|e| e.to_string()),
            ImageFormat::Webp => Ok(()),
        };
        // Decoders pad a JPEG scan that ends early and return an image; every declared block
        // must be coded.
        let coverage = match (format, &complete) {
            (ImageFormat::Jpeg, Ok(())) => jpeg_scan::check_jpeg_coverage(bytes),
            _ => Ok(()),
        };
        let incomplete = |r: &mut ImageReport, reason: &str| {
            let msg = format!(
                "{name} declares {w}×{h} pixels but its image data ends before all of them ({reason}); it may be cut off or altered — export it again and re-upload"
            );
            r.errors.push(Problem::new("incomplete_image", msg));
        };
        match (decoded.dhash, complete, coverage) {
            (_, _, Err(e @ jpeg_scan::ScanError::Incomplete { .. })) => {
                incomplete(&mut report, &e.to_string());
            }
            (Err(f), _, _) if f.incomplete => incomplete(&mut report, &f.reason),
            (Err(f), _, _) => corrupt(&mut report, &f.reason),
            (Ok(_), Err(reason), _) => corrupt(&mut report, &reason),
            (Ok(_), Ok(()), Err(e)) => corrupt(&mut report, &e.to_string()),
            (Ok(hash), Ok(()), Ok(())) => {
                report.perceptual_hash = Some(format!("{hash:016x}"));
            }
        }
    }
    report
}
