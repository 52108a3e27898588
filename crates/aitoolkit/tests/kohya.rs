//! The kohya → diffusers converter against the trainer's own outputs: the trainer writes both
//! forms for the tiny model; converting its kohya file gives its diffusers file's tensors under
//! the same names, with the same bytes.

mod common;

use std::collections::BTreeMap;

use common::*;
use loraforge_checks::{LoraFormat, LoraRules, UnetLayout, inspect_lora, kohya_to_diffusers};

/// name → (dtype, shape, bytes) of a safetensors file, read independently of the converter.
fn tensors(file: &[u8]) -> BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&file[8..8 + n]).unwrap();
    let data = &file[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let off: Vec<usize> = v["data_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_u64().unwrap() as usize)
                .collect();
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            (
                k,
                (
                    v["dtype"].as_str().unwrap().to_owned(),
                    shape,
                    data[off[0]..off[1]].to_vec(),
                ),
            )
        })
        .collect()
}

#[test]
fn the_trainers_kohya_file_converts_into_its_diffusers_file() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..3u32 {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, (i * 80) as u8])
        });
        img.save(images.join(format!("{i:02}.png"))).unwrap();
        std::fs::write(images.join(format!("{i:02}.txt")), "zxq, a photo").unwrap();
    }
    let mut spec = serde_json::to_value(loraforge_domain::TrainingParams {
        base_model: tiny_model().display().to_string(),
        rank: 4,
        alpha: 8,
        steps: 2,
        resolution: 64,
        lr_warmup_steps: 0,
        trigger_words: vec!["zxq".into()],
        // Every module the trainer can adapt, so every name mapping is exercised.
        target_modules: loraforge_domain::params::TARGET_MODULES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        ..Default::default()
    })
    .unwrap();
    spec["job_id"] = "0193aaaa-0000-7000-8000-000000000000".into();
    spec["validation"] = serde_json::json!({"enabled": false, "scorer": null});
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = dir.path().join("out");
    let run = std::process::Command::new(trainer_python())
        .args(["-m", "loraforge_trainer", "train", "--spec"])
        .arg(&spec_path)
        .arg("--images")
        .arg(&images)
        .arg("--out")
        .arg(&out)
        .envs(trainer_env())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "trainer: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    let kohya = std::fs::read(out.join("model.kohya.safetensors")).unwrap();
    let diffusers = std::fs::read(out.join("model.safetensors")).unwrap();
    let converted = kohya_to_diffusers(&kohya, UnetLayout::SDXL).unwrap();
    let (want, got) = (tensors(&diffusers), tensors(&converted));
    assert!(want.len() > 100, "{} tensors", want.len());
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, t) in &want {
        assert_eq!(&got[name], t, "{name}");
    }
    let rules = LoraRules {
        min_bytes: 0,
        ..LoraRules::default()
    };
    let a = inspect_lora(&diffusers, &rules).unwrap();
    let b = inspect_lora(&converted, &rules).unwrap();
    assert_eq!(b.format, LoraFormat::Diffusers);
    assert_eq!((b.rank, b.alpha, b.modules), (a.rank, a.alpha, a.modules));
    assert_eq!(
        b.metadata.get("loraforge.job_id"),
        a.metadata.get("loraforge.job_id")
    );
}
