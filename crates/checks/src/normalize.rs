//! Turning an image upright before it is stored (PRD 2: EXIF orientation applied). Trainers
//! read pixels and ignore EXIF, so a phone photo tagged "rotate 90°" would otherwise be trained
//! on sideways — the classic silent dataset bug. The image is decoded, rotated/flipped as its
//! orientation says, and re-encoded without EXIF: JPEG sources as JPEG quality 95, PNG as PNG,
//! WebP as lossless WebP.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageReader, Limits};
use loraforge_domain::ImageFormat;

use crate::image_check::sniff;

/// JPEG quality of re-encoded upright JPEGs: visually lossless, about the size of a camera file.
pub const UPRIGHT_JPEG_QUALITY: u8 = 95;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("EXIF orientation {0} does not exist; it must be 1 to 8")]
    BadOrientation(u8),
    #[error("the image could not be decoded: {0}")]
    Decode(String),
    #[error("the upright image could not be encoded: {0}")]
    Encode(String),
}

/// The image as it should be seen: `bytes` when `orientation` is 1, otherwise the decoded
/// pixels with the orientation applied, re-encoded in the same format without EXIF. Meant for
/// images that already passed `check_image` (which bounds their pixel count); never panics.
pub fn normalize_orientation(
    bytes: &[u8],
    format: ImageFormat,
    orientation: u8,
) -> Result<Vec<u8>, NormalizeError> {
    let o =
        Orientation::from_exif(orientation).ok_or(NormalizeError::BadOrientation(orientation))?;
    if o == Orientation::NoTransforms {
        return Ok(bytes.to_vec());
    }
    catch_unwind(AssertUnwindSafe(|| {
        let mut img = decode(bytes, format)?;
        img.apply_orientation(o);
        encode(&img, format)
    }))
    .unwrap_or_else(|_| {
        Err(NormalizeError::Decode(
            "the decoder crashed on it".to_owned(),
        ))
    })
}

fn decode(bytes: &[u8], format: ImageFormat) -> Result<DynamicImage, NormalizeError> {
    let (w, h) = sniff::header_dimensions(format, bytes)
        .map_err(|e| NormalizeError::Decode(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(
        (u64::from(w) * u64::from(h))
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    let fmt = match format {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Webp => image::ImageFormat::WebP,
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), fmt);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| NormalizeError::Decode(e.to_string()))
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>, NormalizeError> {
    let mut out = Vec::new();
    let enc_err = |e: image::ImageError| NormalizeError::Encode(e.to_string());
    match format {
        ImageFormat::Jpeg => {
            // JPEG holds 8-bit gray or colour, no alpha.
            let img = match img {
                DynamicImage::ImageLuma8(_) => img.clone(),
                other => DynamicImage::ImageRgb8(other.to_rgb8()),
            };
            img.write_with_encoder(JpegEncoder::new_with_quality(
                &mut out,
                UPRIGHT_JPEG_QUALITY,
            ))
            .map_err(enc_err)?;
        }
        ImageFormat::Png => img
            .write_with_encoder(PngEncoder::new(&mut out))
            .map_err(enc_err)?,
        ImageFormat::Webp => {
            let img = if img.color().has_alpha() {
                DynamicImage::ImageRgba8(img.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(img.to_rgb8())
            };
            img.write_with_encoder(WebPEncoder::new_lossless(&mut out))
                .map_err(enc_err)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage};

    use super::*;
    use crate::check_image;
    use crate::image_check::testutil::{jpeg_bytes, png_bytes, small_rules, with_jpeg_exif};

    /// 64×32: left half red, right half blue.
    fn halves() -> RgbImage {
        RgbImage::from_fn(64, 32, |x, _| {
            if x < 32 {
                Rgb([230, 20, 20])
            } else {
                Rgb([20, 20, 230])
            }
        })
    }

    fn is_red(p: &Rgb<u8>) -> bool {
        p[0] > 180 && p[2] < 80
    }
    fn is_blue(p: &Rgb<u8>) -> bool {
        p[2] > 180 && p[0] < 80
    }

    #[test]
    fn an_orientation_6_jpeg_is_stored_upright() {
        // Orientation 6: the camera was turned; viewers rotate 90° clockwise to show it.
        let sideways = with_jpeg_exif(&jpeg_bytes(&halves(), 95), 6);
        let before = check_image("phone.jpg", &sideways, &small_rules());
        assert_eq!(
            (before.orientation, before.width, before.height),
            (6, Some(32), Some(64))
        );

        let upright = normalize_orientation(&sideways, ImageFormat::Jpeg, 6).unwrap();
        assert!(upright.starts_with(&[0xFF, 0xD8, 0xFF]), "still a JPEG");
        let img = image::load_from_memory(&upright).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 64));
        // Rotating clockwise puts the left (red) half on top.
        assert!(is_red(img.get_pixel(16, 8)), "{:?}", img.get_pixel(16, 8));
        assert!(
            is_blue(img.get_pixel(16, 56)),
            "{:?}",
            img.get_pixel(16, 56)
        );

        // The stored file carries no orientation any more, and checks as the same upright size.
        let after = check_image("phone.jpg", &upright, &small_rules());
        assert!(after.ok(), "{:?}", after.errors);
        assert_eq!(
            (after.orientation, after.width, after.height),
            (1, Some(32), Some(64))
        );
    }

    #[test]
    fn other_orientations_and_png_follow_the_exif_rules() {
        let jpeg = with_jpeg_exif(&jpeg_bytes(&halves(), 95), 3); // 180°
        let img =
            image::load_from_memory(&normalize_orientation(&jpeg, ImageFormat::Jpeg, 3).unwrap())
                .unwrap()
                .to_rgb8();
        assert_eq!(img.dimensions(), (64, 32));
        assert!(is_blue(img.get_pixel(8, 16)) && is_red(img.get_pixel(56, 16)));

        // PNG stays PNG (lossless): orientation 8 rotates 90° counter-clockwise, red at the bottom.
        let png = png_bytes(&halves());
        let out = normalize_orientation(&png, ImageFormat::Png, 8).unwrap();
        assert!(out.starts_with(b"\x89PNG"));
        let img = image::load_from_memory(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 64));
        assert_eq!(*img.get_pixel(0, 63), Rgb([230, 20, 20]));
        assert_eq!(*img.get_pixel(0, 0), Rgb([20, 20, 230]));
    }

    #[test]
    fn orientation_1_is_a_no_op_and_bad_input_is_an_error() {
        let png = png_bytes(&halves());
        assert_eq!(
            normalize_orientation(&png, ImageFormat::Png, 1).unwrap(),
            png
        );
        assert_eq!(
            normalize_orientation(&png, ImageFormat::Png, 9),
            Err(NormalizeError::BadOrientation(9))
        );
        assert!(matches!(
            normalize_orientation(b"\xFF\xD8\xFFgarbage", ImageFormat::Jpeg, 6),
            Err(NormalizeError::Decode(_))
        ));
        assert!(matches!(
            normalize_orientation(&[], ImageFormat::Png, 6),
            Err(NormalizeError::Decode(_))
        ));
    }
}
