//! An image is valid only if every pixel its header declares decodes: files whose header claims
//! more pixels than their data holds are refused (`incomplete_image` where the decoder can tell
//! that its data ran out, `corrupt_image` where it meets garbage first), in every format.

use loraforge_domain::{DatasetRules, ImageFormat};

use super::check_image;
use super::testutil::*;

/// A 64×64 lossy (VP8) WebP made by Pillow; the `image` crate only encodes lossless WebP.
const LOSSY_WEBP: &[u8] = include_bytes!("fixtures/lossy.webp");
/// A 64×64 progressive JPEG made by Pillow (the `image` crate encodes baseline only).
const PROGRESSIVE_JPEG: &[u8] = include_bytes!("fixtures/prog.jpg");

fn rules() -> DatasetRules {
    DatasetRules {
        allow_webp: true,
        ..small_rules()
    }
}

/// Rewrites the frame header (SOF0 or SOF2) to claim `w`×`h`.
fn jpeg_claiming(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let at = out
        .windows(2)
        .position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2])
        .expect("a frame header");
    // marker(2) length(2) precision(1) height(2) width(2)
    out[at + 5..at + 7].copy_from_slice(&h.to_be_bytes());
    out[at + 7..at + 9].copy_from_slice(&w.to_be_bytes());
    out
}

/// Rewrites IHDR to claim `w`×`h`, with a correct CRC (so only the pixel data can tell).
fn png_claiming(png: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    out[16..20].copy_from_slice(&w.to_be_bytes());
    out[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&out[12..29]);
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Rewrites a WebP's first chunk (VP8 or VP8L) to claim `w`×`h`.
fn webp_claiming(webp: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = webp.to_vec();
    match &out[12..16] {
        b"VP8 " => {
            out[26..28].copy_from_slice(&(w as u16).to_le_bytes());
            out[28..30].copy_from_slice(&(h as u16).to_le_bytes());
        }
        b"VP8L" => {
            let old = u32::from_le_bytes([out[21], out[22], out[23], out[24]]);
            let bits = (old & !0x0FFF_FFFF) | (w - 1) | ((h - 1) << 14);
            out[21..25].copy_from_slice(&bits.to_le_bytes());
        }
        other => panic!("unexpected WebP chunk {other:?}"),
    }
    out
}

fn codes(r: &super::ImageReport) -> Vec<&'static str> {
    r.errors.iter().map(|p| p.code).collect()
}

fn assert_incomplete(name: &str, bytes: &[u8], claimed: (u32, u32)) {
    let r = check_image(name, bytes, &rules());
    assert_eq!(codes(&r), ["incomplete_image"], "{name}: {:?}", r.errors);
    let (w, h) = claimed;
    let msg = &r.errors[0].message;
    assert!(
        msg.starts_with(&format!(
            "{name} declares {w}×{h} pixels but its image data ends before all of them"
        )),
        "{msg}"
    );
    assert!(r.perceptual_hash.is_none());
}

/// Refused, as incomplete or corrupt: when a wider claim changes how the data is read, the
/// decoder meets garbage (a bad filter byte, an invalid code) before it runs out.
fn assert_refused(name: &str, bytes: &[u8]) {
    let r = check_image(name, bytes, &rules());
    assert!(
        matches!(codes(&r)[..], ["incomplete_image"] | ["corrupt_image"]),
        "{name}: {:?}",
        r.errors
    );
    assert!(r.perceptual_hash.is_none());
}

#[test]
fn the_fixtures_themselves_are_accepted() {
    for (name, bytes, format) in [
        ("lossy.webp", LOSSY_WEBP, ImageFormat::Webp),
        ("prog.jpg", PROGRESSIVE_JPEG, ImageFormat::Jpeg),
    ] {
        let r = check_image(name, bytes, &rules());
        assert!(r.ok(), "{name}: {:?}", r.errors);
        assert_eq!(
            (r.format, r.width, r.height),
            (Some(format), Some(64), Some(64))
        );
    }
}

#[test]
fn baseline_jpeg_claiming_ten_times_its_size_is_incomplete() {
    let real = jpeg_bytes(&picture(64, 64, 1), 90);
    assert!(check_image("real.jpg", &real, &rules()).ok());
    assert_incomplete("big.jpg", &jpeg_claiming(&real, 640, 640), (640, 640));
    // One row of blocks short is as wrong as nine tenths short.
    assert_incomplete("tall.jpg", &jpeg_claiming(&real, 64, 72), (64, 72));
}

#[test]
fn progressive_jpeg_claiming_more_than_it_holds_is_incomplete() {
    assert_incomplete(
        "prog.jpg",
        &jpeg_claiming(PROGRESSIVE_JPEG, 640, 640),
        (640, 640),
    );
    assert_incomplete(
        "prog.jpg",
        &jpeg_claiming(PROGRESSIVE_JPEG, 64, 80),
        (64, 80),
    );
}

#[test]
fn png_claiming_more_rows_than_it_holds_is_incomplete() {
    let real = png_bytes(&picture(64, 64, 2));
    assert_incomplete("big.png", &png_claiming(&real, 64, 640), (64, 640));
    assert_refused("big2.png", &png_claiming(&real, 640, 640));
}

#[test]
fn webp_claiming_more_than_it_holds_is_incomplete() {
    // image-webp reports running out of data as a corrupt bitstream, like other damage.
    assert_refused("lossy.webp", &webp_claiming(LOSSY_WEBP, 640, 640));
    assert_refused("lossy.webp", &webp_claiming(LOSSY_WEBP, 64, 72));
    let lossless = webp_bytes(&picture(64, 64, 3));
    assert!(check_image("ll.webp", &lossless, &rules()).ok());
    assert_refused("ll.webp", &webp_claiming(&lossless, 640, 640));
    assert_refused("ll.webp", &webp_claiming(&lossless, 64, 72));
}
