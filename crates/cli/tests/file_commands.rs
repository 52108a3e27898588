//! `check-dataset` and `inspect` as a user runs them: output, exit codes, hostile files.

mod common;

use common::noise_png;

use std::path::Path;
use std::process::{Command, Output};

fn loraforge(dir: &Path) -> Command {
    let mut c = common::loraforge(dir);
    // Small test images pass the size window and minimum side.
    c.env("LORAFORGE_IMAGE_MIN_BYTES", "1")
        .env("LORAFORGE_IMAGE_MIN_SIDE", "32");
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().unwrap();
    (
        status.code().expect("exited, not killed by a signal"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

#[test]
fn check_dataset_accepts_a_good_folder_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for i in 0..3 {
        std::fs::write(imgs.join(format!("p{i}.png")), noise_png(64, 48, i)).unwrap();
    }
    std::fs::write(imgs.join("notes.txt"), "ignored: not an image extension").unwrap();
    let (code, out, _) = run(loraforge(dir.path()).args(["check-dataset", "imgs"]));
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("file")
            && lines[0].contains("format")
            && lines[0].contains("dimensions")
            && lines[0].contains("problems"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("p0.png")
            && lines[1].contains("png")
            && lines[1].contains("64×48")
            && lines[1].contains("ok"),
        "{out}"
    );
    assert!(out.contains("accepted: 3 images pass every check"), "{out}");
    assert!(!out.contains("notes.txt"));
}

#[test]
fn check_dataset_rejects_empty_and_disguised_files_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for i in 0..2 {
        std::fs::write(p.join(format!("p{i}.png")), noise_png(64, 64, i)).unwrap();
    }
    std::fs::write(p.join("empty.jpg"), b"").unwrap();
    std::fs::write(
        p.join("notes.png"),
        b"this is a text file named like a picture\n".repeat(10),
    )
    .unwrap();
    let (code, out, _) = run(loraforge(p).args([
        "check-dataset",
        "p0.png",
        "p1.png",
        "empty.jpg",
        "notes.png",
    ]));
    assert_eq!(code, 1, "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {out}"))
            .to_owned()
    };
    assert!(
        row("empty.jpg").contains("FAIL")
            && row("empty.jpg").contains("empty.jpg is empty (0 bytes)"),
        "{out}"
    );
    assert!(
        row("notes.png").contains("FAIL")
            && row("notes.png").contains("is not a JPEG or PNG image (its content is plain text)"),
        "{out}"
    );
    assert!(row("p0.png").trim_end().ends_with(" ok"), "{out}");
    assert!(out.contains("rejected: 2 of 4 images failed"), "{out}");

    // Too few images is a problem of the set: exit 1 with how many to add.
    let (code, out, _) = run(loraforge(p).args(["check-dataset", "p0.png"]));
    assert_eq!(code, 1);
    assert!(
        out.contains("error: 3 images are required, 1 was uploaded; add at least 2 more"),
        "{out}"
    );
}

#[test]
fn check_dataset_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(loraforge(dir.path()).args(["check-dataset"]));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(loraforge(dir.path()).args(["check-dataset", "missing-dir"]));
    assert_eq!(code, 2);
    assert!(err.contains("missing-dir"), "{err}");
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let (code, _, err) = run(loraforge(dir.path()).args(["check-dataset", "empty"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("holds no .jpg, .jpeg, .png or .webp files"),
        "{err}"
    );
}

/// A kohya-style LoRA: `modules` modules of rank 4 (F16), alpha 8 (F32), padded header.
fn kohya_file(modules: usize, poison: bool) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let mut add = |name: String, dtype: &str, shape: Vec<u64>, bytes: Vec<u8>| {
        let begin = data.len();
        data.extend_from_slice(&bytes);
        header.insert(name, serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}));
    };
    let f16 = |n: usize| {
        (0..n)
            .flat_map(|i| (0x2000u16 + (i % 0x400) as u16).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    for m in 0..modules {
        let base = format!("lora_unet_down_blocks_0_attentions_0_proj_{m}");
        let mut down = f16(4 * 32);
        if poison && m == 0 {
            down[0..2].copy_from_slice(&0x7E00u16.to_le_bytes()); // NaN
        }
        add(format!("{base}.lora_down.weight"), "F16", vec![4, 32], down);
        add(
            format!("{base}.lora_up.weight"),
            "F16",
            vec![32, 4],
            f16(32 * 4),
        );
        add(
            format!("{base}.alpha"),
            "F32",
            vec![],
            8.0f32.to_le_bytes().to_vec(),
        );
    }
    header.insert("__metadata__".into(), serde_json::json!({"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"}));
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

#[test]
fn inspect_reports_a_good_lora_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.safetensors"), kohya_file(3, false)).unwrap();
    let mut c = loraforge(dir.path());
    c.env("LORAFORGE_LORA_MIN_BYTES", "0");
    let (code, out, err) = run(c.args(["inspect", "good.safetensors"]));
    assert_eq!(code, 0, "{out}{err}");
    for expected in [
        "good.safetensors: OK",
        "format     kohya",
        "modules    3",
        "rank       4",
        "alpha      8 (from .alpha tensors)",
        "F16 ×6, F32 ×3",
        "base       sdxl_base_v1-0",
        "trainer    networks.lora",
        "NaN/Inf    none",
        "ss_network_module = networks.lora",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    let mut c = loraforge(dir.path());
    c.env("LORAFORGE_LORA_MIN_BYTES", "0");
    let (code, out, _) = run(c.args(["inspect", "good.safetensors", "--json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["report"]["format"], "kohya");
    assert_eq!(v["report"]["rank"], 4);
    assert_eq!(v["report"]["alpha"], 8.0);
    assert_eq!(v["report"]["modules"], 3);
    assert_eq!(v["report"]["values_scanned"], true);
}

#[test]
fn inspect_rejects_bad_files_with_exit_1_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("nan.safetensors"), kohya_file(2, true)).unwrap();
    std::fs::write(p.join("empty.safetensors"), b"").unwrap();
    std::fs::write(
        p.join("text.safetensors"),
        b"hello, I am not a tensor file at all",
    )
    .unwrap();
    std::fs::write(
        p.join("huge-header.safetensors"),
        [0xF0u8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, b'{', b'}'],
    )
    .unwrap();
    std::fs::write(p.join("good.safetensors"), kohya_file(1, false)).unwrap();

    let inspect = |args: &[&str], min: &str| {
        let mut c = loraforge(p);
        c.env("LORAFORGE_LORA_MIN_BYTES", min)
            .arg("inspect")
            .args(args);
        run(&mut c)
    };
    let (code, out, err) = inspect(&["nan.safetensors", "--json"], "0");
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "non_finite_values");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1 NaN"),
        "{v}"
    );

    for (file, code_word) in [
        ("empty.safetensors", "truncated_file"),
        ("text.safetensors", "bad_header_length"),
        ("huge-header.safetensors", "bad_header_length"),
    ] {
        let (code, out, err) = inspect(&[file], "0");
        assert_eq!(code, 1, "{file}: {out}{err}");
        assert!(
            out.contains(&format!("{file}: rejected ({code_word})")),
            "{file}: {out}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // The default size window (5 MB minimum) applies unless configured.
    let (code, out, _) = inspect(&["good.safetensors"], "5242880");
    assert_eq!(code, 1);
    assert!(
        out.contains("rejected (too_small_file)") && out.contains("must be at least 5 MB"),
        "{out}"
    );
    let (code, _, err) = inspect(&["missing.safetensors"], "0");
    assert_eq!(code, 2);
    assert!(err.contains("cannot open missing.safetensors"), "{err}");
}

#[test]
fn lora_size_settings_have_their_documented_names_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(loraforge(dir.path()).arg("config"));
    assert_eq!(code, 0);
    let value = |k: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(k))
            .map(|l| {
                l.split('=')
                    .nth(1)
                    .unwrap()
                    .split("  #")
                    .next()
                    .unwrap()
                    .trim()
                    .to_owned()
            })
    };
    assert_eq!(value("lora_min_bytes").as_deref(), Some("5242880"));
    assert_eq!(value("lora_max_bytes").as_deref(), Some("209715200"));
    assert_eq!(
        value("image_url_allow_private_addresses").as_deref(),
        Some("false")
    );
    assert_eq!(value("download_cache_ttl_secs").as_deref(), Some("3600"));
    assert!(
        out.contains("# LORAFORGE_LORA_MIN_BYTES")
            && out.contains("# LORAFORGE_IMAGE_URL_ALLOWED_HOSTS"),
        "{out}"
    );
    let (code, _, err) = run(loraforge(dir.path()).arg("config").env(
        "LORAFORGE_IMAGE_URL_ALLOWED_HOSTS",
        "ok.example.com,http://bad",
    ));
    assert_eq!(code, 1);
    assert!(err.contains("image_url_allowed_hosts"), "{err}");
}
