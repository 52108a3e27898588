//! The decoder-side checks: EXIF orientation, a full decode as the integrity proof, and a
//! perceptual hash of the decoded pixels for near-duplicate detection.
//!
//! Callers must have refused oversized images from the header first (`sniff`); the decoder's
//! `Limits` repeat that guard, pinned to the header's own dimensions, so a file whose decoder
//! disagrees with its header is refused rather than trusted.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use loraforge_domain::ImageFormat;

/// Bytes per pixel of the widest output our formats decode to (RGBA, 16 bits per channel).
const MAX_BYTES_PER_PIXEL: u64 = 8;
/// Decoder working memory beyond the output buffer (Huffman tables, PNG chunk buffers, …).
const DECODER_SLACK_BYTES: u64 = 64 * 1024 * 1024;

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// EXIF orientation 1–8; 1 when the file has none or it cannot be read.
    pub orientation: u8,
    /// The 64-bit difference hash of the upright image, or why decoding failed.
    pub dhash: Result<u64, Failure>,
}

/// Why a decode failed, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    /// The data ended before every pixel the header declares.
    pub incomplete: bool,
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Self {
        Self {
            reason: reason.to_owned(),
            incomplete: false,
        }
    }
}

/// Reads orientation and, when `full_decode` is set, decodes every pixel.
///
/// `dims` are the stored dimensions from the header, already checked against the pixel limit.
/// Never panics: a panic inside a decoder becomes a decode error.
pub fn decode(bytes: &[u8], format: ImageFormat, dims: (u32, u32), full_decode: bool) -> Decoded {
    match catch_unwind(AssertUnwindSafe(|| {
        decode_inner(bytes, format, dims, full_decode)
    })) {
        Ok(d) => d,
        Err(_) => Decoded {
            orientation: 1,
            dhash: Err("the decoder crashed on it".into()),
        },
    }
}

fn decode_inner(bytes: &[u8], format: ImageFormat, dims: (u32, u32), full_decode: bool) -> Decoded {
    let mut limits = Limits::default();
    limits.max_image_width = Some(dims.0);
    limits.max_image_height = Some(dims.1);
    let pixels = u64::from(dims.0) * u64::from(dims.1);
    limits.max_alloc = Some(
        pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .saturating_add(DECODER_SLACK_BYTES),
    );

    let mut reader = ImageReader::with_format(Cursor::new(bytes), to_image_format(format));
    reader.limits(limits);
    let mut decoder = match reader.into_decoder() {
        Ok(d) => d,
        Err(e) => {
            return Decoded {
                orientation: 1,
                dhash: Err(describe(&e)),
            };
        }
    };
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let exif = orientation.to_exif();
    if decoder.dimensions() != dims {
        return Decoded {
            orientation: exif,
            dhash: Err("its header and its image data disagree about its size".into()),
        };
    }
    if !full_decode {
        return Decoded {
            orientation: exif,
            dhash: Err("not decoded".into()),
        };
    }
    let dhash = match DynamicImage::from_decoder(decoder) {
        Ok(img) => Ok(dhash(&img, orientation)),
        Err(e) => Err(describe(&e)),
    };
    Decoded {
        orientation: exif,
        dhash,
    }
}

fn to_image_format(f: ImageFormat) -> image::ImageFormat {
    match f {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Webp => image::ImageFormat::WebP,
    }
}

/// Decoder errors as a short phrase for the user; limit errors say so plainly.
fn describe(e: &image::ImageError) -> Failure {
    Failure {
        reason: describe_reason(e),
        incomplete: ends_early(e),
    }
}

/// Whether the decoder ran out of data before the declared pixels (PNG: IDAT too short or the
/// file cut off). The `image` crate passes the codec's error through only as text and a source.
fn ends_early(e: &image::ImageError) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        {
            return true;
        }
        let text = err.to_string();
        if text.contains("not have enough data") || text.contains("unexpected end") {
            return true;
        }
        source = err.source();
    }
    false
}

fn describe_reason(e: &image::ImageError) -> String {
    match e {
        image::ImageError::Limits(_) => "it needs more memory to open than is allowed".to_owned(),
        other => {
            let s = other.to_string();
            // Keep messages one line and short whatever the decoder says.
            let s: String = s.chars().filter(|c| !c.is_control()).take(160).collect();
            if s.is_empty() {
                "unknown decoding error".to_owned()
            } else {
                s
            }
        }
    }
}

/// Difference hash (dHash): shrink to a 32×32 thumbnail, turn it upright, reduce to 9×8
/// grayscale and set one bit per horizontally adjacent pair whose brightness increases.
/// Re-encoded, resized or lightly edited copies land within a few bits of each other.
pub fn dhash(img: &DynamicImage, orientation: Orientation) -> u64 {
    let mut thumb = img.thumbnail_exact(32, 32);
    thumb.apply_orientation(orientation);
    let small = image::imageops::resize(&thumb.to_luma8(), 9, 8, FilterType::Triangle);
    let mut hash = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            let left = small.get_pixel(x, y)[0];
            let right = small.get_pixel(x + 1, y)[0];
            hash = (hash << 1) | u64::from(left < right);
        }
    }
    hash
}
