//! Any bytes, as a downloaded `.safetensors` LoRA: `inspect_lora` must return Ok or a clean
//! error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loraforge_checks::{LoraRules, inspect_lora};

fuzz_target!(|data: &[u8]| {
    let rules = LoraRules { min_bytes: 0, max_bytes: u64::MAX, scan_values: true };
    if let Ok(report) = inspect_lora(data, &rules) {
        assert_eq!(report.total_bytes, data.len() as u64);
        assert!(report.rank > 0 && report.modules > 0);
    }
});
