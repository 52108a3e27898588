//! Per-image checks: each rule, its message, and hostile files.

use loraforge_domain::{DatasetRules, ImageFormat};

use super::testutil::*;
use super::{check_image, decode, sniff};

fn codes(r: &super::ImageReport) -> Vec<&'static str> {
    r.errors.iter().map(|p| p.code).collect()
}

#[test]
fn accepts_a_good_png_and_jpeg() {
    let img = picture(96, 64, 0);
    for (name, bytes, fmt) in [
        ("a.png", png_bytes(&img), ImageFormat::Png),
        ("a.jpg", jpeg_bytes(&img, 90), ImageFormat::Jpeg),
    ] {
        let r = check_image(name, &bytes, &small_rules());
        assert!(r.ok(), "{name}: {:?}", r.errors);
        assert_eq!(r.format, Some(fmt));
        assert_eq!((r.width, r.height, r.orientation), (Some(96), Some(64), 1));
        assert_eq!(r.bytes, bytes.len() as u64);
        assert_eq!(r.content_hash, blake3::hash(&bytes).to_hex().to_string());
        assert_eq!(r.perceptual_hash.as_ref().map(String::len), Some(16));
    }
}

#[test]
fn default_rules_accept_a_real_sized_photo() {
    let bytes = jpeg_bytes(&noise(600, 520, 1), 90);
    assert!(
        bytes.len() as u64 >= 100 * 1024,
        "test photo too small: {}",
        bytes.len()
    );
    let r = check_image("photo.jpg", &bytes, &DatasetRules::default());
    assert!(r.ok(), "{:?}", r.errors);
}

#[test]
fn zero_byte_file_is_too_small_and_nothing_else() {
    let r = check_image("empty.png", &[], &DatasetRules::default());
    assert_eq!(codes(&r), ["too_small_file"]);
    assert_eq!(
        r.errors[0].message,
        "empty.png is empty (0 bytes); upload the image again"
    );
    assert_eq!(r.format, None);
}

#[test]
fn small_file_is_refused_with_the_window() {
    let bytes = png_bytes(&picture(40, 40, 1));
    let r = check_image(
        "tiny.png",
        &bytes,
        &DatasetRules {
            min_side: 16,
            ..DatasetRules::default()
        },
    );
    assert_eq!(codes(&r), ["too_small_file"]);
    let msg = &r.errors[0].message;
    assert!(msg.starts_with("tiny.png is "), "{msg}");
    assert!(
        msg.contains("; images must be at least 100 KB — upload the original photo"),
        "{msg}"
    );
}

#[test]
fn large_file_is_refused_without_decoding() {
    let mut bytes = jpeg_bytes(&picture(64, 64, 0), 90);
    bytes.resize(13_002_342, 0); // padding after EOI
    let r = check_image("big.jpg", &bytes, &small_rules());
    assert_eq!(codes(&r), ["too_large_file"]);
    assert_eq!(
        r.errors[0].message,
        "big.jpg is 12.4 MB; images must be at most 10 MB — export it at a lower quality"
    );
    assert_eq!(r.format, Some(ImageFormat::Jpeg));
    assert_eq!(r.perceptual_hash, None);
}

#[test]
fn text_named_png_is_not_an_image() {
    let r = check_image("notes.png", b"shopping list: eggs, milk\n", &small_rules());
    assert_eq!(codes(&r), ["unsupported_format"]);
    assert_eq!(
        r.errors[0].message,
        "notes.png is not a JPEG or PNG image (its content is plain text); upload a .jpg or .png photo"
    );
}

#[test]
fn format_comes_from_content_not_extension() {
    let png = png_bytes(&picture(64, 64, 2));
    let r = check_image("really-a-png.jpg", &png, &small_rules());
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(r.format, Some(ImageFormat::Png));

    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0; 64]);
    let r = check_image("anim.png", &gif, &small_rules());
    assert_eq!(codes(&r), ["unsupported_format"]);
    assert!(
        r.errors[0].message.contains("(its content is a GIF image)"),
        "{}",
        r.errors[0].message
    );
}

#[test]
fn webp_is_refused_by_default_and_checked_when_allowed() {
    let bytes = webp_bytes(&picture(80, 60, 3));
    let r = check_image("cat.webp", &bytes, &small_rules());
    assert_eq!(codes(&r), ["unsupported_format"]);
    assert_eq!(
        r.errors[0].message,
        "cat.webp is a WebP image; only JPEG and PNG images are accepted — convert it to .jpg or .png"
    );

    let allow = DatasetRules {
        allow_webp: true,
        ..small_rules()
    };
    let r = check_image("cat.webp", &bytes, &allow);
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(
        (r.format, r.width, r.height),
        (Some(ImageFormat::Webp), Some(80), Some(60))
    );

    let r = check_image("notes.txt", b"hello", &allow);
    assert!(
        r.errors[0]
            .message
            .contains("is not a JPEG, PNG or WebP image"),
        "{}",
        r.errors[0].message
    );
}

#[test]
fn small_dimensions_are_refused() {
    let bytes = png_bytes(&picture(480, 640, 0));
    let rules = DatasetRules {
        min_bytes: 1,
        ..DatasetRules::default()
    };
    let r = check_image("photo3.png", &bytes, &rules);
    assert_eq!(codes(&r), ["too_small_dimensions"]);
    assert_eq!(
        r.errors[0].message,
        "photo3.png is 480×640; images must be at least 512×512"
    );
    assert_eq!((r.width, r.height), (Some(480), Some(640)));
}

#[test]
fn huge_png_header_is_refused_before_decoding() {
    let bytes = png_header_only(100_000, 100_000);
    let r = check_image(
        "scan.png",
        &bytes,
        &DatasetRules {
            min_bytes: 1,
            ..DatasetRules::default()
        },
    );
    assert_eq!(codes(&r), ["too_many_pixels"]);
    assert_eq!(
        r.errors[0].message,
        "scan.png is 100000×100000 (10000 megapixels); images may have at most 40 megapixels"
    );
    assert_eq!((r.width, r.height), (Some(100_000), Some(100_000)));
}

#[test]
fn decoder_limits_are_pinned_to_the_header() {
    // Second guard: if the decoder sees a bigger image than the header parser did, it refuses.
    let bytes = png_bytes(&picture(64, 64, 0));
    let d = decode::decode(&bytes, ImageFormat::Png, (32, 32), true);
    assert!(d.dhash.is_err());
}

#[test]
fn truncated_png_is_incomplete() {
    let bytes = png_bytes(&noise(64, 64, 7));
    let r = check_image("cut.png", &bytes[..bytes.len() / 2], &small_rules());
    assert_eq!(codes(&r), ["incomplete_image"]);
    let msg = &r.errors[0].message;
    assert!(
        msg.starts_with(
            "cut.png declares 64×64 pixels but its image data ends before all of them ("
        ),
        "{msg}"
    );
    assert!(
        msg.ends_with("it may be cut off or altered — export it again and re-upload"),
        "{msg}"
    );
}

#[test]
fn truncated_jpeg_is_corrupt() {
    // The JPEG decoder pads a cut-off scan with grey; the structure walk catches it.
    let bytes = jpeg_bytes(&noise(64, 64, 5), 90);
    let r = check_image("cut.jpg", &bytes[..bytes.len() * 2 / 3], &small_rules());
    assert_eq!(codes(&r), ["corrupt_image"]);
    assert_eq!(
        r.errors[0].message,
        "cut.jpg could not be read as a JPEG image (the file ends before its image data is complete); \
         it may be damaged or incomplete — export it again and re-upload"
    );
    // Trailing data after EOI (camera trailers, motion photos) is fine.
    let mut trailer = bytes.clone();
    trailer.extend_from_slice(b"MotionPhoto_Data....");
    assert!(check_image("motion.jpg", &trailer, &small_rules()).ok());
}

#[test]
fn jpeg_with_broken_huffman_table_is_corrupt() {
    let bytes = break_first_dht(&jpeg_bytes(&noise(64, 64, 3), 90));
    let r = check_image("broken.jpg", &bytes, &small_rules());
    assert_eq!(codes(&r), ["corrupt_image"], "{:?}", r.errors);
}

#[test]
fn header_without_a_frame_is_corrupt() {
    let r = check_image("x.jpg", &[0xFF, 0xD8, 0xFF, 0xD9], &small_rules());
    assert_eq!(codes(&r), ["corrupt_image"]);
    let r = check_image("x.png", b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDX", &small_rules());
    assert_eq!(codes(&r), ["corrupt_image"]);
}

#[test]
fn exif_orientation_6_in_jpeg_swaps_the_reported_size() {
    let stored = jpeg_bytes(&picture(600, 800, 1), 80);
    let bytes = with_jpeg_exif(&stored, 6);
    let r = check_image("rotated.jpg", &bytes, &small_rules());
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(
        (r.orientation, r.width, r.height),
        (6, Some(800), Some(600))
    );

    let rules = DatasetRules {
        min_side: 700,
        ..small_rules()
    };
    let r = check_image("rotated.jpg", &bytes, &rules);
    assert_eq!(
        r.errors[0].message,
        "rotated.jpg is 800×600; images must be at least 700×700"
    );
}

#[test]
fn exif_orientation_in_png_exif_chunk_is_read() {
    let png = png_bytes(&picture(40, 70, 2));
    let bytes = insert_png_chunk(&png, &png_chunk(b"eXIf", &exif_tiff(8)));
    let r = check_image("rotated.png", &bytes, &small_rules());
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!((r.orientation, r.width, r.height), (8, Some(70), Some(40)));
}

#[test]
fn every_prefix_of_valid_files_is_handled_without_panic() {
    let jpeg = with_jpeg_exif(&jpeg_bytes(&noise(48, 40, 9), 70), 3);
    let png = png_bytes(&noise(40, 48, 9));
    let webp = webp_bytes(&picture(40, 48, 1));
    let rules = DatasetRules {
        allow_webp: true,
        ..small_rules()
    };
    for file in [&jpeg, &png, &webp] {
        for cut in (0..file.len()).step_by(7) {
            let r = check_image("cut", &file[..cut], &rules);
            assert!(!r.ok(), "prefix {cut} of {} accepted", file.len());
        }
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let png = png_bytes(&noise(40, 40, 2));
    let jpeg = jpeg_bytes(&noise(40, 40, 2), 80);
    for file in [png, jpeg] {
        for i in (0..file.len()).step_by(13) {
            let mut f = file.clone();
            f[i] ^= 0xA5;
            let _ = check_image("f", &f, &small_rules());
        }
    }
}

#[test]
fn sniffing_describes_other_content() {
    assert_eq!(sniff::describe_content(b"%PDF-1.7"), "a PDF document");
    assert_eq!(
        sniff::describe_content(b"<svg xmlns='x'>"),
        "an SVG drawing"
    );
    assert_eq!(
        sniff::describe_content(b"\0\0\0\x18ftypheic\0\0"),
        "a HEIC image"
    );
    assert_eq!(
        sniff::describe_content(&[0, 1, 2, 3, 200]),
        "unrecognised binary data"
    );
    assert_eq!(
        sniff::sniff_format(b"RIFF\0\0\0\0WEBPVP8 "),
        Some(ImageFormat::Webp)
    );
}

#[test]
fn report_serializes_with_codes() {
    let r = check_image("notes.png", b"hi", &small_rules());
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["errors"][0]["code"], "unsupported_format");
    assert_eq!(v["orientation"], 1);
    assert_eq!(v["format"], serde_json::Value::Null);
}
