//! Header parsing, layout and value checks.

use super::dtype::Dtype;
use super::scan::count_non_finite;
use super::testutil::*;
use super::{LoraError, LoraRules, inspect_lora};

fn err(bytes: &[u8]) -> LoraError {
    inspect_lora(bytes, &rules()).expect_err("should be refused")
}

/// One valid F16 pair named `m`, rank 2, then whatever `extra` the test needs.
fn with_header(json: &str, data: &[u8]) -> Vec<u8> {
    file(json.as_bytes(), data)
}

#[test]
fn a_valid_file_passes() {
    let r = inspect_lora(&kohya(2, 4, Some(0x4400)).build(), &rules()).unwrap();
    assert_eq!((r.modules, r.rank), (3, 4));
    assert!(r.values_scanned);
}

#[test]
fn zero_byte_file() {
    assert!(matches!(
        inspect_lora(&[], &LoraRules::default()),
        Err(LoraError::TooSmall { bytes: 0, .. })
    ));
    assert_eq!(err(&[]), LoraError::Truncated { bytes: 0 });
    assert_eq!(err(&[1, 0, 0]).code(), "truncated_file");
}

#[test]
fn size_window() {
    let bytes = kohya(1, 4, None).build();
    let small = LoraRules {
        min_bytes: bytes.len() as u64 + 1,
        ..rules()
    };
    assert_eq!(
        inspect_lora(&bytes, &small).unwrap_err().code(),
        "too_small_file"
    );
    let large = LoraRules {
        max_bytes: bytes.len() as u64 - 1,
        ..rules()
    };
    assert_eq!(
        inspect_lora(&bytes, &large).unwrap_err().code(),
        "too_large_file"
    );
    let e = LoraError::TooSmall {
        bytes: 3 * 1024 * 1024,
        min: 5 * 1024 * 1024,
    };
    assert!(
        e.to_string()
            .starts_with("the LoRA file is 3 MB but must be at least 5 MB"),
        "{e}"
    );
}

#[test]
fn header_length_near_u64_max_is_a_clean_error() {
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert_eq!(
        err(&bytes),
        LoraError::HeaderLength {
            header_len: u64::MAX,
            available: 2
        }
    );
    let mut bytes = (u64::MAX - 7).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 64]);
    assert_eq!(err(&bytes).code(), "bad_header_length");
}

#[test]
fn header_length_bounds() {
    assert_eq!(err(&file(b"{", b"")).code(), "bad_header_length"); // below 2
    let mut beyond = 100u64.to_le_bytes().to_vec();
    beyond.extend_from_slice(b"{}");
    assert_eq!(
        err(&beyond),
        LoraError::HeaderLength {
            header_len: 100,
            available: 2
        }
    );
    let mut huge = 100_000_001u64.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert_eq!(err(&huge).code(), "bad_header_length");
}

#[test]
fn header_must_be_a_json_object() {
    assert_eq!(err(&with_header("[1, 2]", b"")).code(), "bad_header_json");
    assert_eq!(err(&with_header("{\"a\": ", b"")).code(), "bad_header_json");
    assert_eq!(err(&with_header("{\"a\": 1}", b"")).code(), "bad_tensor");
    assert_eq!(
        err(&with_header(r#"{"__metadata__": {"a": 1}}"#, b"")).code(),
        "bad_metadata"
    );
    assert_eq!(
        err(&with_header(r#"{"__metadata__": {"a": "b"}}"#, b"")).code(),
        "no_lora_tensors"
    );
}

#[test]
fn tensor_entries_are_validated() {
    let unknown = r#"{"x": {"dtype": "F17", "shape": [1], "data_offsets": [0, 2]}}"#;
    assert_eq!(
        err(&with_header(unknown, &[0; 2])),
        LoraError::UnknownDtype {
            name: "x".into(),
            dtype: "F17".into()
        }
    );
    let mismatch = r#"{"x": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 10]}}"#;
    assert_eq!(
        err(&with_header(mismatch, &[0; 10])),
        LoraError::SizeMismatch {
            name: "x".into(),
            expected: 12,
            actual: 10
        }
    );
    let overflow =
        r#"{"x": {"dtype": "F16", "shape": [4294967296, 4294967296], "data_offsets": [0, 2]}}"#;
    assert_eq!(err(&with_header(overflow, &[0; 2])).code(), "bad_tensor");
    let bytes_overflow =
        r#"{"x": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 2]}}"#;
    assert_eq!(
        err(&with_header(bytes_overflow, &[0; 2])).code(),
        "bad_tensor"
    );
    let negative = r#"{"x": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}}"#;
    assert_eq!(err(&with_header(negative, &[0; 2])).code(), "bad_tensor");
    let backwards = r#"{"x": {"dtype": "F16", "shape": [0], "data_offsets": [4, 2]}}"#;
    assert_eq!(err(&with_header(backwards, &[0; 4])).code(), "bad_tensor");
    let three = r#"{"x": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2, 4]}}"#;
    assert_eq!(err(&with_header(three, &[0; 4])).code(), "bad_tensor");
}

#[test]
fn overlapping_offsets_are_refused() {
    let h = r#"{"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
               "b": {"dtype": "F16", "shape": [4], "data_offsets": [4, 12]}}"#;
    assert_eq!(
        err(&with_header(h, &[0; 12])),
        LoraError::Overlap {
            first: "a".into(),
            second: "b".into()
        }
    );
    let same = r#"{"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
                  "b": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}"#;
    assert_eq!(
        err(&with_header(same, &[0; 8])).code(),
        "overlapping_tensors"
    );
}

#[test]
fn zero_size_tensor_may_not_sit_inside_another() {
    let inside = r#"{"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
                    "z": {"dtype": "F16", "shape": [0], "data_offsets": [4, 4]}}"#;
    assert_eq!(
        err(&with_header(inside, &[0; 8])),
        LoraError::Overlap {
            first: "a".into(),
            second: "z".into()
        }
    );
    // At a boundary it holds no one's bytes: fine as far as layout goes.
    let boundary = r#"{"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
                      "z": {"dtype": "F16", "shape": [0], "data_offsets": [8, 8]}}"#;
    assert_eq!(
        err(&with_header(boundary, &[0; 8])).code(),
        "no_lora_tensors"
    );
}

#[test]
fn gaps_trailing_bytes_and_out_of_bounds() {
    let gap = r#"{"a": {"dtype": "F16", "shape": [1], "data_offsets": [2, 4]}}"#;
    assert_eq!(
        err(&with_header(gap, &[0; 4])).code(),
        "gap_between_tensors"
    );
    let trailing = r#"{"a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}"#;
    assert_eq!(
        err(&with_header(trailing, &[0; 6])),
        LoraError::TrailingBytes { unused: 4 }
    );
    let oob = r#"{"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}"#;
    assert_eq!(
        err(&with_header(oob, &[0; 6])),
        LoraError::OutOfBounds {
            name: "a".into(),
            end: 8,
            data_len: 6
        }
    );
}

#[test]
fn truncated_file_is_refused() {
    let bytes = peft(3, 4).build();
    let e = err(&bytes[..bytes.len() - 10]);
    assert_eq!(e.code(), "tensor_out_of_bounds");
    assert!(e.is_truncation());
    assert_eq!(err(&bytes[..20]).code(), "bad_header_length");
}

#[test]
fn every_prefix_and_flipped_byte_is_handled() {
    let bytes = diffusers_new(2, 4, 8).meta("ss_x", "y").build();
    for cut in 0..bytes.len() {
        assert!(
            inspect_lora(&bytes[..cut], &rules()).is_err(),
            "prefix {cut}"
        );
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5A;
        let _ = inspect_lora(&b, &rules());
    }
}

#[test]
fn nan_in_misaligned_f16_data_is_found() {
    let mut w = peft(2, 4);
    w.align = false;
    let name =
        "base_model.model.down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.lora_B.weight";
    let bytes = w.poke16(name, 3, 0x7E00).poke16(name, 5, 0xFC00).build();
    match err(&bytes) {
        LoraError::NonFinite { count: 1, tensors } => {
            assert_eq!(tensors[0].name, name);
            assert_eq!((tensors[0].nan, tensors[0].inf), (1, 1));
        }
        other => panic!("{other:?}"),
    }
    let unscanned = LoraRules {
        scan_values: false,
        ..rules()
    };
    assert!(!inspect_lora(&bytes, &unscanned).unwrap().values_scanned);
}

#[test]
fn inf_in_f32_and_bf16_alpha_is_found() {
    let w = kohya(1, 4, None).scalar_f32("lora_unet_x.alpha", f32::INFINITY);
    // an orphan alpha still holds values that must be finite
    let e = err(&w.build());
    assert_eq!(e.code(), "non_finite_values");
    assert!(
        e.to_string().contains("lora_unet_x.alpha (0 NaN, 1 Inf)"),
        "{e}"
    );

    let bf = kohya(1, 4, None).raw(
        "extra",
        "BF16",
        &[2],
        [0x3F80u16, 0x7FC0]
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect(),
    );
    assert_eq!(err(&bf.build()).code(), "non_finite_values");
}

#[test]
fn bit_tests_tell_nan_from_inf_and_finite() {
    let f16: Vec<u8> = [0x7C00u16, 0xFC00, 0x7E00, 0x7C01, 0x7BFF, 0x0001, 0x3C00]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    assert_eq!(count_non_finite(Dtype::F16, &f16), 4);
    let f32s: Vec<u8> = [f32::NAN, f32::INFINITY, f32::MAX, -0.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(count_non_finite(Dtype::F32, &f32s), 2);
    let f64s: Vec<u8> = [f64::NEG_INFINITY, 1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(count_non_finite(Dtype::F64, &f64s), 1);
    assert_eq!(count_non_finite(Dtype::I16, &f16), 0);
}

/// Throughput of the NaN/Inf scan on F16 data. Run with
/// `cargo test --release -p loraforge-checks nan_scan_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn nan_scan_throughput() {
    let elems: u64 = 512 * 1024 * 1024; // 1 GiB of F16
    let mut w = Writer::new();
    w.align = false;
    let data: Vec<u8> = (0..elems)
        .flat_map(|i| (0x2000u16 + (i % 0x800) as u16).to_le_bytes())
        .collect();
    let bytes = w
        .raw("x.lora_A.weight", "F16", &[elems / 4096, 4096], data)
        .build();
    let header = super::header::parse_header(&bytes).unwrap();
    let _ = super::scan::scan_non_finite(&bytes, &header); // warm up
    let runs = 5;
    let start = std::time::Instant::now();
    for _ in 0..runs {
        assert!(super::scan::scan_non_finite(&bytes, &header).is_empty());
    }
    let secs = start.elapsed().as_secs_f64() / f64::from(runs);
    let gbs = (elems * 2) as f64 / secs / 1e9;
    println!(
        "NaN/Inf scan: {:.3} GB in {:.1} ms = {gbs:.2} GB/s ({} threads)",
        (elems * 2) as f64 / 1e9,
        secs * 1e3,
        rayon::current_num_threads()
    );
}
