//! Training parameters: PRD 2's defaults, 004's ranges, parsed field by field so every error
//! names the field that is wrong.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::text::{self, TextRule};
mod prior;

use prior::prior_preservation;
pub use prior::{
    MAX_CLASS_PROMPT_CHARS, NUM_CLASS_IMAGES_RANGE, PRIOR_LOSS_WEIGHT_RANGE, PriorPreservation,
};

pub const DEFAULT_BASE_MODEL: &str = "stabilityai/stable-diffusion-xl-base-1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingType {
    Lora,
    Dreambooth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    #[serde(rename = "adamw")]
    AdamW,
    #[serde(rename = "adamw_8bit")]
    AdamW8bit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    CosineWithWarmup,
    Constant,
    ConstantWithWarmup,
    Linear,
}

/// Fully validated parameters of one training run. Only [`TrainingParams::from_json`] (or the
/// defaults) makes one, so an out-of-range value cannot reach the trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingParams {
    /// A Hugging Face repo id (`owner/name`) or an absolute local diffusers folder under an
    /// allowed root.
    pub base_model: String,
    #[serde(rename = "type")]
    pub training_type: TrainingType,
    pub rank: u32,
    pub alpha: u32,
    pub dropout: f64,
    pub target_modules: Vec<String>,
    pub steps: u32,
    pub learning_rate: f64,
    pub batch_size: u32,
    pub optimizer: Optimizer,
    pub lr_scheduler: LrScheduler,
    pub lr_warmup_steps: u32,
    /// Square training resolution in pixels (multiple of 64).
    pub resolution: u32,
    pub trigger_words: Vec<String>,
    /// At most [`MAX_SEED`], the largest seed the trainer's generators take.
    pub seed: u64,
    /// DreamBooth's prior preservation: present exactly when `training_type` is
    /// [`TrainingType::Dreambooth`] (its fields sit beside the others on the wire and in the
    /// trainer spec; a LoRA of type `lora` carries none of them).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub prior_preservation: Option<PriorPreservation>,
}

impl Default for TrainingParams {
    fn default() -> Self {
        Self {
            base_model: DEFAULT_BASE_MODEL.to_owned(),
            training_type: TrainingType::Lora,
            rank: 8,
            alpha: 32,
            dropout: 0.1,
            target_modules: ["to_k", "to_q", "to_v", "to_out.0"]
                .map(String::from)
                .to_vec(),
            steps: 1500,
            learning_rate: 1e-4,
            batch_size: 1,
            optimizer: Optimizer::AdamW,
            lr_scheduler: LrScheduler::CosineWithWarmup,
            lr_warmup_steps: 100,
            resolution: 1024,
            trigger_words: Vec::new(),
            seed: 42,
            prior_preservation: None,
        }
    }
}

/// The bounds parameters are checked against. The lower bounds of steps and resolution are
/// configurable so tests can train tiny models; the rest are 004's fixed ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLimits {
    pub min_steps: u32,
    pub min_resolution: u32,
    /// Absolute folders under which a local base model may live.
    pub local_model_roots: Vec<PathBuf>,
    /// The operator's allow-list of base models (`LORAFORGE_ALLOWED_BASE_MODELS`): Hugging Face
    /// ids (matched ignoring ASCII case, as the Hub does) and absolute folders, which allow
    /// every model under them like `local_model_roots`. The trainer downloads and runs what is
    /// named here, so nothing else is accepted.
    pub allowed_base_models: Vec<String>,
}

impl Default for ParamLimits {
    fn default() -> Self {
        Self {
            min_steps: 100,
            min_resolution: 256,
            local_model_roots: Vec::new(),
            allowed_base_models: vec![DEFAULT_BASE_MODEL.to_owned()],
        }
    }
}

pub const MAX_STEPS: u32 = 10_000;
pub const MAX_RESOLUTION: u32 = 1024;
/// The trainer seeds torch generators with `seed + n`; it takes seeds up to `2^63 - 1`.
pub const MAX_SEED: u64 = i64::MAX as u64;

/// The UNet modules a LoRA may target: every `Linear`/`Conv2d` of SDXL's UNet that peft adapts
/// and that the kohya export names (`trainer/loraforge_trainer/export.py`). The trainer refuses
/// any other (`spec.TARGET_MODULES`, checked against this list by
/// `tests/trainer_spec_contract.rs`), so the control plane refuses them at submit time.
pub const TARGET_MODULES: [&str; 17] = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "conv",
    "conv_in",
    "conv_out",
    "linear_1",
    "linear_2",
];

/// A parameter that is missing its mark. `field` is the JSON field name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    pub field: String,
    pub message: String,
    /// Set when the value is refused because the operator does not allow it (a base model off
    /// the allow-list): what is allowed. Such requests are well-formed but unprocessable.
    pub allowed: Option<Vec<String>>,
    pub kind: ParamErrorKind,
}

/// Why a parameter is refused: the API answers each differently (400 `invalid_params`, 422
/// `incompatible_params`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamErrorKind {
    /// The value itself: wrong type, out of range, not an allowed entry, unknown field.
    Invalid,
    /// Each value is fine alone but not with the others (e.g. `class_prompt` on a `lora`, or a
    /// `dreambooth` without one): the run could never be trained as asked.
    Incompatible,
}

pub(super) fn err(field: &str, message: impl Into<String>) -> ParamError {
    ParamError {
        field: field.to_owned(),
        message: message.into(),
        allowed: None,
        kind: ParamErrorKind::Invalid,
    }
}

pub(super) fn conflict(field: &str, message: impl Into<String>) -> ParamError {
    ParamError {
        kind: ParamErrorKind::Incompatible,
        ..err(field, message)
    }
}

/// Raw, unvalidated parameters as they arrive in a request (`params` object).
pub type ParamsInput = Map<String, Value>;

const KNOWN_FIELDS: [&str; 18] = [
    "base_model",
    "type",
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "steps",
    "learning_rate",
    "batch_size",
    "optimizer",
    "lr_scheduler",
    "lr_warmup_steps",
    "resolution",
    "trigger_words",
    "seed",
    "class_prompt",
    "num_class_images",
    "prior_loss_weight",
];

impl TrainingParams {
    /// Parses a request's `params` object over the defaults. Unknown fields are refused so a
    /// typo (`"step": 10`) does not silently train with the default.
    pub fn from_json(input: &ParamsInput, limits: &ParamLimits) -> Result<Self, ParamError> {
        if let Some(unknown) = input.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
            return Err(err(
                unknown,
                format!(
                    "unknown parameter; known parameters are {}",
                    KNOWN_FIELDS.join(", ")
                ),
            ));
        }
        let mut p = Self::default();
        let get = |k: &str| input.get(k).filter(|v| !v.is_null());

        if let Some(v) = get("base_model") {
            p.base_model = string(v, "base_model")?;
        }
        p.base_model = allowed_base_model(&p.base_model, limits)?;
        if let Some(v) = get("type") {
            p.training_type = enum_value(v, "type", &["lora", "dreambooth"])?;
        }
        if let Some(v) = get("rank") {
            p.rank = int_in(v, "rank", 4, 128)?;
        }
        if let Some(v) = get("alpha") {
            p.alpha = int_in(v, "alpha", 1, 128)?;
        }
        if let Some(v) = get("dropout") {
            p.dropout = float_in(v, "dropout", 0.0, 0.9)?;
        }
        if let Some(v) = get("target_modules") {
            p.target_modules = string_list(v, "target_modules", 1, TARGET_MODULES.len(), |s| {
                TARGET_MODULES.contains(&s)
            })
            .map_err(|e| ParamError {
                message: format!("{}; allowed: {}", e.message, TARGET_MODULES.join(", ")),
                ..e
            })?;
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = p.target_modules.iter().find(|m| !seen.insert(m.as_str())) {
                return Err(err("target_modules", format!("{dup} is listed twice")));
            }
        }
        if let Some(v) = get("steps") {
            // At least 1 whatever the configured floor: the trainer cannot train 0 steps.
            p.steps = int_in(v, "steps", limits.min_steps.max(1), MAX_STEPS)?;
        }
        if let Some(v) = get("learning_rate") {
            p.learning_rate = float_in(v, "learning_rate", 1e-6, 1e-2)?;
        }
        if let Some(v) = get("batch_size") {
            p.batch_size = int_in(v, "batch_size", 1, 8)?;
        }
        if let Some(v) = get("optimizer") {
            p.optimizer = enum_value(v, "optimizer", &["adamw", "adamw_8bit"])?;
        }
        if let Some(v) = get("lr_scheduler") {
            p.lr_scheduler = enum_value(
                v,
                "lr_scheduler",
                &[
                    "cosine_with_warmup",
                    "constant",
                    "constant_with_warmup",
                    "linear",
                ],
            )?;
        }
        p.lr_warmup_steps = match get("lr_warmup_steps") {
            Some(v) => int_in(v, "lr_warmup_steps", 0, p.steps)?,
            // 10% of the run, at most 100 steps.
            None => (p.steps / 10).min(100),
        };
        if let Some(v) = get("resolution") {
            // At least 64 whatever the configured floor: the trainer's smallest resolution.
            let r = int_in(
                v,
                "resolution",
                limits.min_resolution.max(64),
                MAX_RESOLUTION,
            )?;
            if r % 64 != 0 {
                return Err(err(
                    "resolution",
                    format!(
                        "{r} is not a multiple of 64; use e.g. {}",
                        (r / 64).max(1) * 64
                    ),
                ));
            }
            p.resolution = r;
        }
        if let Some(v) = get("trigger_words") {
            p.trigger_words = string_list(v, "trigger_words", 0, 10, |_| true)?
                .iter()
                .map(|w| {
                    text::clean(w, &TextRule::TRIGGER_WORD)
                        .map_err(|e| err("trigger_words", e.to_string()))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get("seed") {
            p.seed = v.as_u64().filter(|s| *s <= MAX_SEED).ok_or_else(|| {
                err(
                    "seed",
                    format!("must be a whole number from 0 to {MAX_SEED}"),
                )
            })?;
        }
        p.prior_preservation = prior_preservation(p.training_type, &get)?;
        Ok(p)
    }
}

pub(super) fn string(v: &Value, field: &str) -> Result<String, ParamError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| err(field, "must be a string"))
}

pub(super) fn int_in(v: &Value, field: &str, min: u32, max: u32) -> Result<u32, ParamError> {
    let range = || format!("must be a whole number from {min} to {max}");
    let n = match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
    .ok_or_else(|| err(field, range()))?;
    if n < u64::from(min) || n > u64::from(max) {
        return Err(err(field, format!("{n} is out of range; {}", range())));
    }
    Ok(n as u32)
}

pub(super) fn float_in(v: &Value, field: &str, min: f64, max: f64) -> Result<f64, ParamError> {
    let f = v
        .as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| err(field, format!("must be a number from {min:e} to {max:e}")))?;
    if f < min || f > max {
        return Err(err(
            field,
            format!("{f:e} is out of range; use a value from {min:e} to {max:e}"),
        ));
    }
    Ok(f)
}

fn enum_value<T: serde::de::DeserializeOwned>(
    v: &Value,
    field: &str,
    allowed: &[&str],
) -> Result<T, ParamError> {
    serde_json::from_value(v.clone())
        .map_err(|_| err(field, format!("must be one of {}", allowed.join(", "))))
}

fn string_list(
    v: &Value,
    field: &str,
    min_len: usize,
    max_len: usize,
    ok: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ParamError> {
    let items = v
        .as_array()
        .ok_or_else(|| err(field, "must be a list of strings"))?;
    if items.len() < min_len || items.len() > max_len {
        return Err(err(
            field,
            format!(
                "must have {min_len} to {max_len} entries, got {}",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(s) if ok(s) => Ok(s.to_owned()),
            _ => Err(err(field, format!("{item} is not an allowed entry"))),
        })
        .collect()
}

/// `model` as the operator spelled it in `limits.allowed_base_models`, or a local folder under
/// an allowed root; anything else is refused with the list of what is allowed.
pub fn allowed_base_model(model: &str, limits: &ParamLimits) -> Result<String, ParamError> {
    let (folders, ids): (Vec<&String>, Vec<&String>) = limits
        .allowed_base_models
        .iter()
        .partition(|m| Path::new(m.as_str()).is_absolute());
    if let Some(id) = ids.iter().find(|id| id.eq_ignore_ascii_case(model)) {
        return Ok((*id).clone());
    }
    let roots: Vec<PathBuf> = limits
        .local_model_roots
        .iter()
        .cloned()
        .chain(folders.iter().map(PathBuf::from))
        .collect();
    if Path::new(model).is_absolute() && validate_base_model(model, &roots).is_ok() {
        return Ok(model.to_owned());
    }
    let allowed: Vec<String> = ids
        .iter()
        .map(|id| (*id).clone())
        .chain(roots.iter().map(|r| format!("{}/…", r.display())))
        .collect();
    let shown = if allowed.is_empty() {
        "none are configured".to_owned()
    } else {
        allowed.join(", ")
    };
    Err(ParamError {
        allowed: Some(allowed),
        ..err(
            "base_model",
            format!(
                "{model:?} is not a base model this server trains on; allowed: {shown} \
                 (the operator's LORAFORGE_ALLOWED_BASE_MODELS)"
            ),
        )
    })
}

/// A base model is a Hugging Face id (`owner/name`, the characters the Hub allows) or an
/// absolute local path inside one of `roots` with no `..` in it.
pub fn validate_base_model(model: &str, roots: &[PathBuf]) -> Result<(), ParamError> {
    if is_hf_repo_id(model) {
        return Ok(());
    }
    let path = Path::new(model);
    if path.is_absolute() {
        let clean = path
            .components()
            .all(|c| !matches!(c, Component::ParentDir | Component::CurDir));
        if clean && roots.iter().any(|r| path.starts_with(r)) {
            return Ok(());
        }
        let allowed = if roots.is_empty() {
            "no local model folders are allowed on this server".to_owned()
        } else {
            format!(
                "local models must be inside {}",
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        };
        return Err(err(
            "base_model",
            format!("{model} is not an allowed local path; {allowed}"),
        ));
    }
    Err(err(
        "base_model",
        format!(
            "{model:?} is not a Hugging Face model id; use the form owner/name, e.g. {DEFAULT_BASE_MODEL}"
        ),
    ))
}

fn is_hf_repo_id(s: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    matches!(s.split_once('/'), Some((owner, name)) if part_ok(owner) && part_ok(name) && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<TrainingParams, ParamError> {
        TrainingParams::from_json(v.as_object().unwrap(), &ParamLimits::default())
    }

    #[test]
    fn empty_input_gives_prd_defaults() {
        let p = parse(json!({})).unwrap();
        assert_eq!(p, TrainingParams::default());
        assert_eq!(p.base_model, "stabilityai/stable-diffusion-xl-base-1.0");
        assert_eq!(
            (p.rank, p.alpha, p.steps, p.batch_size, p.resolution),
            (8, 32, 1500, 1, 1024)
        );
        assert_eq!(p.target_modules, ["to_k", "to_q", "to_v", "to_out.0"]);
        assert_eq!(p.lr_warmup_steps, 100);
    }

    #[test]
    fn ranges_are_enforced_and_name_the_field() {
        let cases = [
            (json!({"learning_rate": 1e-7}), "learning_rate"),
            (json!({"learning_rate": 0.02}), "learning_rate"),
            (json!({"batch_size": 0}), "batch_size"),
            (json!({"batch_size": 9}), "batch_size"),
            (json!({"batch_size": 1.5}), "batch_size"),
            (json!({"steps": 99}), "steps"),
            (json!({"steps": 10001}), "steps"),
            (json!({"resolution": 192}), "resolution"),
            (json!({"resolution": 1088}), "resolution"),
            (json!({"resolution": 500}), "resolution"),
            (json!({"rank": 3}), "rank"),
            (json!({"rank": 129}), "rank"),
            (json!({"alpha": 0}), "alpha"),
            (json!({"alpha": 129}), "alpha"),
            (json!({"type": "textual_inversion"}), "type"),
            (json!({"base_model": "not a model"}), "base_model"),
            (json!({"base_model": "/etc/passwd"}), "base_model"),
            (json!({"stepz": 10}), "stepz"),
            (json!({"target_modules": []}), "target_modules"),
            (
                json!({"trigger_words": ["ok", "bad\nword"]}),
                "trigger_words",
            ),
            (json!({"dropout": "high"}), "dropout"),
        ];
        for (input, field) in cases {
            let e = parse(input.clone()).unwrap_err();
            assert_eq!(e.field, field, "{input}: {e}");
        }
    }

    #[test]
    fn bounds_are_inclusive() {
        let p = parse(
            json!({"learning_rate": 1e-6, "batch_size": 8, "steps": 10000,
            "resolution": 256, "rank": 128, "alpha": 1}),
        )
        .unwrap();
        assert_eq!(
            (p.batch_size, p.steps, p.resolution, p.rank, p.alpha),
            (8, 10000, 256, 128, 1)
        );
        assert!(parse(json!({"learning_rate": 1e-2, "steps": 100, "resolution": 1024, "rank": 4, "alpha": 128})).is_ok());
    }

    #[test]
    fn lower_bounds_of_steps_and_resolution_are_configurable() {
        let limits = ParamLimits {
            min_steps: 1,
            min_resolution: 64,
            ..Default::default()
        };
        let p = TrainingParams::from_json(
            json!({"steps": 10, "resolution": 64}).as_object().unwrap(),
            &limits,
        )
        .unwrap();
        assert_eq!((p.steps, p.resolution, p.lr_warmup_steps), (10, 64, 1));
        let e = TrainingParams::from_json(json!({"resolution": 32}).as_object().unwrap(), &limits)
            .unwrap_err();
        assert_eq!(e.field, "resolution");
    }

    #[test]
    fn base_model_accepts_hub_ids_and_allowed_local_paths() {
        for ok in [
            "stabilityai/stable-diffusion-xl-base-1.0",
            "a/b",
            "Org_1/model.v2",
        ] {
            assert!(validate_base_model(ok, &[]).is_ok(), "{ok}");
        }
        for bad in [
            "", "noslash", "a/b/c", "/a", "a/", "../x/y", "a/-b", "a b/c", "a/b..c",
        ] {
            assert!(validate_base_model(bad, &[]).is_err(), "{bad}");
        }
        let roots = [PathBuf::from("/data/models")];
        assert!(validate_base_model("/data/models/tiny-sdxl", &roots).is_ok());
        assert!(validate_base_model("/data/models/../secrets", &roots).is_err());
        assert!(validate_base_model("/data/modelsX/tiny", &roots).is_err());
    }

    #[test]
    fn only_allowed_base_models_are_accepted() {
        let limits = ParamLimits {
            local_model_roots: vec![PathBuf::from("/data/models")],
            allowed_base_models: vec![
                DEFAULT_BASE_MODEL.to_owned(),
                "Org/Other-Model".to_owned(),
                "/srv/extra".to_owned(),
            ],
            ..Default::default()
        };
        let ok = |m: &str| allowed_base_model(m, &limits);
        assert_eq!(ok(DEFAULT_BASE_MODEL).unwrap(), DEFAULT_BASE_MODEL);
        assert_eq!(
            ok("org/other-model").unwrap(),
            "Org/Other-Model",
            "the operator's spelling"
        );
        assert_eq!(ok("/data/models/tiny").unwrap(), "/data/models/tiny");
        assert_eq!(ok("/srv/extra/sdxl").unwrap(), "/srv/extra/sdxl");
        for bad in [
            "attacker/evil-model",
            "stabilityai/stable-diffusion-xl-base-1.0-x",
            "/data/models/../secrets",
            "/etc",
            "not a model",
            "",
        ] {
            let e = ok(bad).unwrap_err();
            assert_eq!(e.field, "base_model");
            assert_eq!(
                e.allowed.as_deref().unwrap(),
                [
                    DEFAULT_BASE_MODEL,
                    "Org/Other-Model",
                    "/data/models/…",
                    "/srv/extra/…"
                ],
                "{bad}"
            );
            assert!(e.message.contains("Org/Other-Model"), "{}", e.message);
        }
        // The default list: SDXL base 1.0 only.
        assert!(parse(json!({"base_model": "stabilityai/stable-diffusion-2-1"})).is_err());
        assert!(parse(json!({"base_model": DEFAULT_BASE_MODEL})).is_ok());
    }

    #[test]
    fn trigger_words_are_clean_text() {
        let p = parse(json!({"trigger_words": ["  ｏｈｗｘ "]})).unwrap();
        assert_eq!(p.trigger_words, ["ohwx"]);
        for bad in ["a\u{200b}b", "x\u{202e}y", "", "a\nb"] {
            let e = parse(json!({"trigger_words": [bad]})).unwrap_err();
            assert_eq!(e.field, "trigger_words", "{bad:?}");
        }
        let e = parse(json!({"trigger_words": ["ok", "a\u{200b}b"]})).unwrap_err();
        assert!(
            e.message.contains("U+200B") && e.message.contains("position 2"),
            "{e}"
        );
    }

    #[test]
    fn null_means_default() {
        let p = parse(json!({"rank": null, "trigger_words": ["ohwx"]})).unwrap();
        assert_eq!(p.rank, 8);
        assert_eq!(p.trigger_words, ["ohwx"]);
    }

    #[test]
    fn round_trips_through_json() {
        let p = parse(json!({"type": "dreambooth", "class_prompt": "a dog", "optimizer": "adamw_8bit", "seed": 7}))
            .unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "dreambooth");
        assert_eq!(v["optimizer"], "adamw_8bit");
        assert_eq!(v["class_prompt"], "a dog");
        let back: TrainingParams = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn target_modules_come_from_the_allow_list_once_each() {
        let all: Vec<&str> = TARGET_MODULES.to_vec();
        assert_eq!(
            parse(json!({"target_modules": all}))
                .unwrap()
                .target_modules,
            TARGET_MODULES
        );
        for bad in [
            json!(["to_q", "nope"]),
            json!(["to_q", "to_q"]),
            json!(["0"]),
            json!(["to_out"]),
        ] {
            let e = parse(json!({"target_modules": bad})).unwrap_err();
            assert_eq!(e.field, "target_modules", "{bad}");
        }
    }

    #[test]
    fn seeds_stop_where_the_trainer_stops() {
        assert_eq!(parse(json!({"seed": MAX_SEED})).unwrap().seed, MAX_SEED);
        let e = parse(json!({"seed": MAX_SEED + 1})).unwrap_err();
        assert_eq!(e.field, "seed");
        assert!(parse(json!({"seed": -1})).is_err());
    }
}
