//! Any bytes, as an uploaded image: `check_image` must return a report, never panic, and never
//! allocate beyond the pixel limit (libFuzzer's -rss_limit_mb catches that).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loraforge_checks::check_image;
use loraforge_domain::DatasetRules;

fuzz_target!(|data: &[u8]| {
    // Small limits keep each run fast; WebP on so its decoder is exercised too.
    let rules = DatasetRules {
        min_bytes: 0,
        min_side: 1,
        max_pixels: 4_000_000,
        allow_webp: true,
        ..DatasetRules::default()
    };
    let report = check_image("fuzz.bin", data, &rules);
    assert_eq!(report.bytes, data.len() as u64);
    if report.ok() {
        assert!(report.width.is_some() && report.height.is_some() && report.perceptual_hash.is_some());
    }
});
