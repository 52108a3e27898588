//! What the control plane accepts at submit time, the trainer accepts at run time: a request
//! accepted with 202 must never fail in the trainer for a reason known when it was made.
//!
//! Two checks against `trainer/loraforge_trainer/spec.py`: its lists of allowed values (types,
//! optimizers, LR schedulers, target modules) equal the domain's, read from the source; and the
//! extremes of every range the domain accepts, serialized as the worker route serializes them,
//! are parsed by the trainer's own `parse_spec` (with the trainer's Python, which the test command
//! always builds: `scripts/trainer-env.sh`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use loraforge_domain::params::{
    MAX_CLASS_PROMPT_CHARS, MAX_RESOLUTION, MAX_SEED, MAX_STEPS, NUM_CLASS_IMAGES_RANGE,
    PRIOR_LOSS_WEIGHT_RANGE, TARGET_MODULES,
};
use loraforge_domain::{ParamLimits, TrainingParams};
use serde_json::{Value, json};

fn trainer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../trainer")
}

fn spec_source() -> String {
    std::fs::read_to_string(trainer_dir().join("loraforge_trainer/spec.py")).expect("spec.py")
}

/// The string literals of the Python tuple assigned to `name` at the top level of spec.py.
fn python_tuple(source: &str, name: &str) -> Vec<String> {
    let start = source
        .find(&format!("\n{name} = ("))
        .unwrap_or_else(|| panic!("{name} = (…) in spec.py"));
    let body = &source[start..];
    let body = &body[body.find('(').unwrap() + 1..body.find(')').unwrap()];
    body.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn serde_names<T: serde::Serialize>(values: &[T]) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn the_trainers_allowed_values_are_the_domains() {
    use loraforge_domain::TrainingType;
    use loraforge_domain::params::{LrScheduler, Optimizer};
    let src = spec_source();
    assert_eq!(python_tuple(&src, "TARGET_MODULES"), TARGET_MODULES);
    assert_eq!(
        python_tuple(&src, "TYPES"),
        serde_names(&[TrainingType::Lora, TrainingType::Dreambooth])
    );
    assert_eq!(
        python_tuple(&src, "OPTIMIZERS"),
        serde_names(&[Optimizer::AdamW, Optimizer::AdamW8bit])
    );
    assert_eq!(
        python_tuple(&src, "LR_SCHEDULERS"),
        serde_names(&[
            LrScheduler::CosineWithWarmup,
            LrScheduler::Constant,
            LrScheduler::ConstantWithWarmup,
            LrScheduler::Linear,
        ])
    );
    let dreambooth = serde_json::to_value(
        parse(json!({"type": "dreambooth", "class_prompt": "a dog"})).prior_preservation,
    )
    .unwrap();
    let mut fields: Vec<String> = dreambooth.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    let mut python = python_tuple(&src, "DREAMBOOTH_FIELDS");
    python.sort();
    assert_eq!(python, fields);
}

/// The smallest floors an operator can configure.
fn parse(v: Value) -> TrainingParams {
    let limits = ParamLimits {
        min_steps: 0,
        min_resolution: 0,
        ..Default::default()
    };
    TrainingParams::from_json(v.as_object().unwrap(), &limits)
        .unwrap_or_else(|e| panic!("the domain refuses {v}: {e}"))
}

/// What `routes/worker.rs` hands the worker: the params plus job id and validation.
fn trainer_spec(p: &TrainingParams) -> Value {
    let mut v = serde_json::to_value(p).unwrap();
    v["job_id"] = json!("0193aaaa-0000-7000-8000-000000000000");
    v["validation"] = json!({"enabled": true, "scorer": null});
    v
}

fn accepted_extremes() -> Vec<Value> {
    let long_word = "w".repeat(64);
    let (n_lo, n_hi) = NUM_CLASS_IMAGES_RANGE;
    let (w_lo, w_hi) = PRIOR_LOSS_WEIGHT_RANGE;
    let mut inputs = vec![
        json!({}),
        json!({"rank": 4, "alpha": 1, "dropout": 0.0, "steps": 1, "learning_rate": 1e-6,
               "batch_size": 1, "lr_warmup_steps": 0, "resolution": 64, "seed": 0,
               "target_modules": TARGET_MODULES, "trigger_words": []}),
        json!({"rank": 128, "alpha": 128, "dropout": 0.9, "steps": MAX_STEPS,
               "learning_rate": 1e-2, "batch_size": 8, "lr_warmup_steps": MAX_STEPS,
               "resolution": MAX_RESOLUTION, "seed": MAX_SEED,
               "trigger_words": vec![long_word.as_str(); 10]}),
        json!({"steps": 0.0 + 10.0, "rank": 8.0, "trigger_words": ["ｚｘｑ", "ohwx-1"]}),
        json!({"type": "dreambooth", "class_prompt": "x", "num_class_images": n_lo,
               "prior_loss_weight": w_lo}),
        json!({"type": "dreambooth", "class_prompt": "é".repeat(MAX_CLASS_PROMPT_CHARS),
               "num_class_images": n_hi, "prior_loss_weight": w_hi, "seed": MAX_SEED}),
    ];
    for m in TARGET_MODULES {
        inputs.push(json!({ "target_modules": [m] }));
    }
    for o in ["adamw", "adamw_8bit"] {
        inputs.push(json!({ "optimizer": o }));
    }
    for s in [
        "cosine_with_warmup",
        "constant",
        "constant_with_warmup",
        "linear",
    ] {
        inputs.push(json!({ "lr_scheduler": s }));
    }
    inputs
        .into_iter()
        .map(|i| trainer_spec(&parse(i)))
        .collect()
}

fn trainer_python() -> PathBuf {
    if let Some(p) = std::env::var_os("LORAFORGE_TRAINER_PYTHON") {
        return p.into();
    }
    let cache = std::env::var_os("LORAFORGE_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/loraforge"),
        PathBuf::from,
    );
    cache.join("venv-trainer/bin/python")
}

#[test]
fn every_spec_the_domain_accepts_the_trainer_parses() {
    let python = trainer_python();
    assert!(
        python.is_file(),
        "no trainer Python at {}: run scripts/trainer-env.sh (or set LORAFORGE_TRAINER_PYTHON)",
        python.display()
    );
    let specs = accepted_extremes();
    // parse_spec only: no torch model is loaded, so this takes about a second.
    let script = r#"
import json, sys
from loraforge_trainer.errors import TrainerError
from loraforge_trainer.spec import parse_spec
for spec in json.load(sys.stdin):
    try:
        parse_spec(spec)
        print("ok")
    except TrainerError as e:
        print(f"refused: {e.reason}")
"#;
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .current_dir(trainer_dir())
        .env("PYTHONPATH", trainer_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the trainer's Python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&specs).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(answers.len(), specs.len());
    for (spec, answer) in specs.iter().zip(&answers) {
        assert_eq!(
            answer, "ok",
            "the trainer refuses what the domain accepts: {spec}"
        );
    }
}
