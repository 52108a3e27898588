//! Decodes take their estimated memory from the shared budget before anything is allocated.

use std::time::Duration;

use super::testutil::*;
use super::{DECODE_BUSY, check_image_within, decode_cost, sniff};
use crate::budget::DecodeBudget;

fn codes(r: &super::ImageReport) -> Vec<&'static str> {
    r.errors.iter().map(|p| p.code).collect()
}

/// A header-only PNG of `w`×`h` with the given bit depth and colour type (CRC fixed).
fn png_header(w: u32, h: u32, depth: u8, colour: u8) -> Vec<u8> {
    let mut png = png_header_only(w, h);
    png[24] = depth;
    png[25] = colour;
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

#[test]
fn the_cost_comes_from_the_header() {
    // The bomb: 40 MP at 16 bits per channel with alpha is 320 MB decoded.
    assert_eq!(
        decode_cost(&png_header(8000, 5000, 16, 6)),
        Some(320_000_000)
    );
    assert_eq!(
        decode_cost(&png_header(8000, 5000, 8, 2)),
        Some(160_000_000)
    );
    assert_eq!(decode_cost(&png_header(100, 100, 8, 0)), Some(20_000));
    let jpeg = jpeg_bytes(&picture(64, 48, 0), 90);
    assert_eq!(decode_cost(&jpeg), Some(64 * 48 * 3));
    assert_eq!(decode_cost(b"not an image"), None);
    assert_eq!(
        sniff::decoded_bytes(loraforge_domain::ImageFormat::Webp, &[], (10, 10)),
        600
    );
}

#[test]
fn an_image_larger_than_the_whole_budget_is_refused_without_decoding() {
    let png = png_bytes(&picture(64, 64, 0));
    let budget = DecodeBudget::new(64 * 64 * 4 - 1, Duration::from_secs(600));
    let r = check_image_within("big.png", &png, &small_rules(), &budget);
    assert_eq!(codes(&r), ["too_large_to_decode"]);
    assert_eq!(
        r.errors[0].message,
        "big.png is 64×64 and needs 16 KB of memory to check; this server checks images of at \
         most 16 KB — save it with fewer pixels or 8 bits per channel"
    );
    assert_eq!(budget.in_use(), 0);
    // Exactly the whole budget is fine, and is given back.
    let budget = DecodeBudget::new(64 * 64 * 4, Duration::ZERO);
    assert!(check_image_within("big.png", &png, &small_rules(), &budget).ok());
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn a_decode_that_cannot_get_room_in_time_is_busy_not_invalid() {
    let png = png_bytes(&picture(64, 64, 1));
    let budget = DecodeBudget::new(64 * 64 * 4, Duration::from_millis(20));
    let held = budget.acquire(1).unwrap();
    let r = check_image_within("a.png", &png, &small_rules(), &budget);
    assert_eq!(codes(&r), [DECODE_BUSY]);
    drop(held);
    assert!(check_image_within("a.png", &png, &small_rules(), &budget).ok());
}
