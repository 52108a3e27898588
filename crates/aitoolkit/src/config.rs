//! Our trainer spec → ai-toolkit's job config (`shared/research/api-contracts.md` §4), a pure
//! function. Every training value comes from the spec the worker protocol hands out (the
//! domain's `TrainingParams` plus `job_id`, `validation`, `checkpoint_every`); what the spec
//! does not say is ai-toolkit's own SDXL defaults from its UI (`options.tsx`): arch `sdxl`, the
//! `ddpm` noise scheduler and sampler, guidance 6, no quantization.

use serde_json::{Value, json};

use loraforge_domain::params::{LrScheduler, Optimizer, TrainingParams, TrainingType};

/// ai-toolkit's SDXL defaults (its UI's `sdxl` arch).
pub const ARCH: &str = "sdxl";
pub const NOISE_SCHEDULER: &str = "ddpm";
pub const SAMPLER: &str = "ddpm";
pub const GUIDANCE_SCALE: u32 = 6;
pub const SAMPLE_STEPS: u32 = 20;
/// Step saves when the service sets no checkpoint interval (the UI's default).
pub const DEFAULT_SAVE_EVERY: u32 = 250;
/// Step saves kept (the UI's default).
pub const STEP_SAVES_KEPT: u32 = 4;
/// Samples at the end of training: our validation takes three images.
pub const SAMPLES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the trainer spec does not parse: {0}")]
    Spec(String),
    #[error("ai-toolkit cannot train this: {0}")]
    Unsupported(String),
}

/// ai-toolkit's dataset-name rule: lowercased, each run of characters outside `[a-z0-9]`
/// becomes one `_` (`datasets/create`).
pub fn sanitize_dataset_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    out
}

/// ai-toolkit's upload file-name rule: each character outside `[a-zA-Z0-9.-]` becomes `_`.
pub fn sanitize_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The domain's parameters inside a trainer spec.
pub fn params_of(spec: &Value) -> Result<TrainingParams, ConfigError> {
    serde_json::from_value(spec.clone()).map_err(|e| ConfigError::Spec(e.to_string()))
}

fn optimizer_name(o: Optimizer) -> &'static str {
    match o {
        Optimizer::AdamW => "adamw",
        Optimizer::AdamW8bit => "adamw8bit",
    }
}

fn scheduler_name(s: LrScheduler) -> &'static str {
    match s {
        LrScheduler::CosineWithWarmup => "cosine",
        LrScheduler::Constant => "constant",
        LrScheduler::ConstantWithWarmup => "constant_with_warmup",
        LrScheduler::Linear => "linear",
    }
}

/// The scheduler an ai-toolkit name stands for (the inverse of the mapping above).
pub fn scheduler_from_name(name: &str) -> Option<LrScheduler> {
    Some(match name {
        "cosine" => LrScheduler::CosineWithWarmup,
        "constant" => LrScheduler::Constant,
        "constant_with_warmup" => LrScheduler::ConstantWithWarmup,
        "linear" => LrScheduler::Linear,
        _ => return None,
    })
}

pub fn optimizer_from_name(name: &str) -> Option<Optimizer> {
    Some(match name {
        "adamw" => Optimizer::AdamW,
        "adamw8bit" => Optimizer::AdamW8bit,
        _ => return None,
    })
}

/// The sample prompts: the trigger words, as our validation prompts them.
fn sample_prompt(p: &TrainingParams) -> String {
    if p.trigger_words.is_empty() {
        "a photo".to_owned()
    } else {
        format!("{}, a photo", p.trigger_words.join(", "))
    }
}

/// The job config for `spec` under job `name`, training on `dataset_folder` (an absolute path
/// under ai-toolkit's `DATASETS_FOLDER`) into `training_folder` (its `TRAINING_FOLDER`).
pub fn job_config(
    spec: &Value,
    name: &str,
    dataset_folder: &str,
    training_folder: &str,
) -> Result<Value, ConfigError> {
    let p = params_of(spec)?;
    if p.training_type != TrainingType::Lora || p.prior_preservation.is_some() {
        return Err(ConfigError::Unsupported(
            "DreamBooth prior preservation is not mapped to ai-toolkit; use another backend"
                .to_owned(),
        ));
    }
    let save_every = spec
        .get("checkpoint_every")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_SAVE_EVERY);
    let prompt = sample_prompt(&p);
    let mut process = json!({
        "type": "diffusion_trainer",
        "training_folder": training_folder,
        "device": "cuda",
        "network": {
            "type": "lora",
            "linear": p.rank,
            "linear_alpha": p.alpha,
            "dropout": p.dropout,
            "network_kwargs": {"only_if_contains": p.target_modules},
        },
        "save": {
            "dtype": "float32",
            "save_every": save_every,
            "max_step_saves_to_keep": STEP_SAVES_KEPT,
            "push_to_hub": false,
        },
        "datasets": [{
            "folder_path": dataset_folder,
            "caption_ext": "txt",
            // Our captions already hold the trigger word and our trainer never drops them.
            "caption_dropout_rate": 0.0,
            "cache_latents_to_disk": true,
            "resolution": [p.resolution],
        }],
        "train": {
            "batch_size": p.batch_size,
            "steps": p.steps,
            "gradient_accumulation": 1,
            "train_unet": true,
            "train_text_encoder": false,
            "gradient_checkpointing": true,
            "noise_scheduler": NOISE_SCHEDULER,
            "optimizer": optimizer_name(p.optimizer),
            "lr": p.learning_rate,
            "lr_scheduler": scheduler_name(p.lr_scheduler),
            "lr_warmup_steps": p.lr_warmup_steps,
            "dtype": "bf16",
        },
        "model": {
            "name_or_path": p.base_model,
            "arch": ARCH,
            "quantize": false,
            "quantize_te": false,
        },
        "sample": {
            "sampler": SAMPLER,
            // Once, at the end: the samples are our validation images.
            "sample_every": p.steps,
            "width": p.resolution,
            "height": p.resolution,
            "samples": vec![json!({ "prompt": prompt }); SAMPLES],
            "seed": p.seed,
            "walk_seed": true,
            "guidance_scale": GUIDANCE_SCALE,
            "sample_steps": SAMPLE_STEPS,
        },
    });
    if !p.trigger_words.is_empty() {
        process["trigger_word"] = json!(p.trigger_words.join(", "));
    }
    Ok(json!({
        "job": "extension",
        "config": {"name": name, "process": [process]},
        "meta": {"name": "[name]", "version": "1.0"},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Value {
        let mut v = serde_json::to_value(TrainingParams {
            base_model: "/models/tiny".to_owned(),
            rank: 4,
            alpha: 8,
            steps: 12,
            resolution: 64,
            trigger_words: vec!["zxq".to_owned(), "ohwx".to_owned()],
            seed: 7,
            optimizer: Optimizer::AdamW8bit,
            lr_scheduler: LrScheduler::Linear,
            ..TrainingParams::default()
        })
        .unwrap();
        v["job_id"] = json!("0193aaaa-0000-7000-8000-000000000000");
        v["validation"] = json!({"enabled": true, "scorer": null});
        v
    }

    #[test]
    fn values_come_from_the_spec_and_sdxl_defaults_from_ai_toolkit() {
        let c = job_config(&spec(), "loraforge-x-1", "/ds/loraforge_x_1", "/out").unwrap();
        assert_eq!(c["job"], "extension");
        assert_eq!(c["config"]["name"], "loraforge-x-1");
        let p = &c["config"]["process"][0];
        assert_eq!(p["training_folder"], "/out");
        assert_eq!(p["network"]["linear"], 4);
        assert_eq!(p["network"]["linear_alpha"], 8);
        assert_eq!(
            p["network"]["network_kwargs"]["only_if_contains"],
            json!(["to_k", "to_q", "to_v", "to_out.0"])
        );
        assert_eq!(p["train"]["steps"], 12);
        assert_eq!(p["train"]["lr"], 1e-4);
        assert_eq!(p["train"]["optimizer"], "adamw8bit");
        assert_eq!(p["train"]["lr_scheduler"], "linear");
        assert_eq!(p["train"]["noise_scheduler"], "ddpm");
        assert_eq!(p["datasets"][0]["folder_path"], "/ds/loraforge_x_1");
        assert_eq!(p["datasets"][0]["resolution"], json!([64]));
        assert_eq!(p["model"]["name_or_path"], "/models/tiny");
        assert_eq!(p["model"]["arch"], "sdxl");
        assert_eq!(p["sample"]["sampler"], "ddpm");
        assert_eq!(p["sample"]["guidance_scale"], 6);
        assert_eq!(p["sample"]["seed"], 7);
        assert_eq!(p["sample"]["samples"].as_array().unwrap().len(), 3);
        assert_eq!(p["trigger_word"], "zxq, ohwx");
        assert_eq!(p["save"]["save_every"], 250);
    }

    #[test]
    fn the_checkpoint_interval_sets_step_saves() {
        let mut s = spec();
        s["checkpoint_every"] = json!(5);
        let c = job_config(&s, "n", "/d", "/o").unwrap();
        assert_eq!(c["config"]["process"][0]["save"]["save_every"], 5);
    }

    #[test]
    fn mappings_round_trip() {
        for s in [
            LrScheduler::CosineWithWarmup,
            LrScheduler::Constant,
            LrScheduler::ConstantWithWarmup,
            LrScheduler::Linear,
        ] {
            assert_eq!(scheduler_from_name(scheduler_name(s)), Some(s));
        }
        for o in [Optimizer::AdamW, Optimizer::AdamW8bit] {
            assert_eq!(optimizer_from_name(optimizer_name(o)), Some(o));
        }
    }

    #[test]
    fn dreambooth_and_bad_specs_are_refused() {
        let mut s = spec();
        s["type"] = json!("dreambooth");
        s["class_prompt"] = json!("a person");
        s["num_class_images"] = json!(10);
        s["prior_loss_weight"] = json!(1.0);
        assert!(matches!(
            job_config(&s, "n", "/d", "/o"),
            Err(ConfigError::Unsupported(_))
        ));
        assert!(matches!(
            job_config(&json!({"rank": "x"}), "n", "/d", "/o"),
            Err(ConfigError::Spec(_))
        ));
    }

    #[test]
    fn names_are_sanitized_as_ai_toolkit_does() {
        assert_eq!(
            sanitize_dataset_name("loraforge-0193AB-1"),
            "loraforge_0193ab_1"
        );
        assert_eq!(sanitize_dataset_name("My  Set!"), "my_set_");
        assert_eq!(sanitize_file_name("a b(1).png"), "a_b_1_.png");
    }
}
