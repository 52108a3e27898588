//! Training parameters: PRD 2's defaults, 004's ranges, parsed field by field so every error
//! names the field that is wrong.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::text::{self, TextRule};
mod prior;
mod rules;

use prior::prior_preservation;
pub use prior::{
    CLASS_PROMPT, MAX_CLASS_PROMPT_CHARS, NUM_CLASS_IMAGES, NUM_CLASS_IMAGES_RANGE,
    PRIOR_LOSS_WEIGHT, PRIOR_LOSS_WEIGHT_RANGE, PriorPreservation,
};
pub use rules::*;

pub const DEFAULT_BASE_MODEL: &str = "stabilityai/stable-diffusion-xl-base-1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TrainingType {
    Lora,
    Dreambooth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    #[serde(rename = "adamw")]
    AdamW,
    #[serde(rename = "adamw_8bit")]
    AdamW8bit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl ParamError {
    /// The error for a `params` field serde could not read: `field` is the first path segment
    /// under `params` (`None`: `params` itself is not an object), `detail` serde's message.
    /// Names the field and says what it must be.
    pub fn from_serde(field: Option<&str>, detail: &str, limits: &ParamLimits) -> Self {
        let rules = limits.rules();
        // deny_unknown_fields reports an unknown key at the object, with the key in backticks.
        let unknown = detail
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name);
        if let Some(name) = unknown {
            let known: Vec<&str> = rules.iter().map(|(f, _)| *f).collect();
            return err(
                name,
                format!(
                    "unknown parameter; known parameters are {}",
                    known.join(", ")
                ),
            );
        }
        match field {
            Some(f) => match rules.iter().find(|(name, _)| *name == f) {
                Some((_, Rule::OneOf)) | None => err(f, detail),
                Some((_, rule)) => err(f, rule.expectation()),
            },
            None => err("params", format!("must be a JSON object ({detail})")),
        }
    }
}

/// A request's `params` as it arrives: every field optional (absent or null takes the default),
/// unknown fields refused so a typo (`"step": 10`) does not silently train with the default.
/// [`TrainingParams::from_input`] checks it against [`ParamLimits::rules`]. New parameters go
/// here (with their rule in `rules`), and nowhere else in the wire format: the server parses
/// request bodies with this type and its OpenAPI schema is generated from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ParamsInput {
    /// A Hugging Face model id (`owner/name`) or an absolute diffusers folder under one of the
    /// server's model roots. Default `stabilityai/stable-diffusion-xl-base-1.0`.
    pub base_model: Option<String>,
    /// Default `lora`.
    #[serde(rename = "type")]
    pub training_type: Option<TrainingType>,
    /// LoRA rank. Default 8.
    #[serde(default, deserialize_with = "whole")]
    pub rank: Option<u64>,
    /// LoRA alpha. Default 32.
    #[serde(default, deserialize_with = "whole")]
    pub alpha: Option<u64>,
    /// Default 0.1.
    pub dropout: Option<f64>,
    /// Modules the LoRA adapts. Default `to_k`, `to_q`, `to_v`, `to_out.0`.
    pub target_modules: Option<Vec<String>>,
    /// Training steps. Default 1500.
    #[serde(default, deserialize_with = "whole")]
    pub steps: Option<u64>,
    /// Default 1e-4.
    pub learning_rate: Option<f64>,
    /// Default 1.
    #[serde(default, deserialize_with = "whole")]
    pub batch_size: Option<u64>,
    /// Default `adamw`.
    pub optimizer: Option<Optimizer>,
    /// Default `cosine_with_warmup`.
    pub lr_scheduler: Option<LrScheduler>,
    /// At most `steps`. Default 10% of `steps`, at most 100.
    #[serde(default, deserialize_with = "whole")]
    pub lr_warmup_steps: Option<u64>,
    /// Square training resolution in pixels, a multiple of 64. Default 1024.
    #[serde(default, deserialize_with = "whole")]
    pub resolution: Option<u64>,
    /// Words put in front of every caption that lacks them. Default none.
    pub trigger_words: Option<Vec<String>>,
    /// Default 42.
    #[serde(default, deserialize_with = "whole")]
    pub seed: Option<u64>,
    /// `dreambooth` only, and required there: what the subject is an instance of, e.g. "a photo
    /// of a person" (trimmed).
    pub class_prompt: Option<String>,
    /// `dreambooth` only: class images the base model generates for prior preservation.
    /// Default 50.
    #[serde(default, deserialize_with = "whole")]
    pub num_class_images: Option<u64>,
    /// `dreambooth` only: weight of the prior loss. Default 1.
    pub prior_loss_weight: Option<f64>,
}

/// A whole number written `8` or `8.0`: JSON Schema's `integer` is both, and a client that
/// computes a step count in floating point should not be refused for it.
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                // (Saturates past u64::MAX; every rule's maximum is below it.)
                .map(|f| f as u64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number")))
}

impl ParamsInput {
    /// Reads a `params` JSON value; an error names the field that is wrong.
    pub fn from_value(v: Value, limits: &ParamLimits) -> Result<Self, ParamError> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let field = e.path().iter().find_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                _ => None,
            });
            ParamError::from_serde(field.as_deref(), &e.inner().to_string(), limits)
        })
    }
}

impl TrainingParams {
    /// Parses a `params` object over the defaults (the CLI's and the tests' way in).
    pub fn from_json(input: &Map<String, Value>, limits: &ParamLimits) -> Result<Self, ParamError> {
        let input = ParamsInput::from_value(Value::Object(input.clone()), limits)?;
        Self::from_input(&input, limits)
    }

    /// Checks a request's `params` against [`ParamLimits::rules`], over the defaults.
    pub fn from_input(input: &ParamsInput, limits: &ParamLimits) -> Result<Self, ParamError> {
        let mut p = Self::default();
        if let Some(v) = &input.base_model {
            p.base_model = text_in(v, "base_model", BASE_MODEL)?;
        }
        p.base_model = allowed_base_model(&p.base_model, limits)?;
        if let Some(v) = input.training_type {
            p.training_type = v;
        }
        if let Some(v) = input.rank {
            p.rank = int(v, "rank", RANK)?;
        }
        if let Some(v) = input.alpha {
            p.alpha = int(v, "alpha", ALPHA)?;
        }
        if let Some(v) = input.dropout {
            p.dropout = float(v, "dropout", DROPOUT)?;
        }
        if let Some(v) = &input.target_modules {
            p.target_modules = list(v, "target_modules", TARGET_MODULE_LIST)?;
        }
        if let Some(v) = input.steps {
            p.steps = int(v, "steps", limits.steps())?;
        }
        if let Some(v) = input.learning_rate {
            p.learning_rate = float(v, "learning_rate", LEARNING_RATE)?;
        }
        if let Some(v) = input.batch_size {
            p.batch_size = int(v, "batch_size", BATCH_SIZE)?;
        }
        if let Some(v) = input.optimizer {
            p.optimizer = v;
        }
        if let Some(v) = input.lr_scheduler {
            p.lr_scheduler = v;
        }
        p.lr_warmup_steps = match input.lr_warmup_steps {
            Some(v) => {
                let w = int(v, "lr_warmup_steps", LR_WARMUP_STEPS)?;
                if w > p.steps {
                    return Err(err(
                        "lr_warmup_steps",
                        format!("{w} is more than the run's {} steps", p.steps),
                    ));
                }
                w
            }
            // 10% of the run, at most 100 steps.
            None => (p.steps / 10).min(100),
        };
        if let Some(v) = input.resolution {
            p.resolution = int(v, "resolution", limits.resolution())?;
        }
        if let Some(v) = &input.trigger_words {
            p.trigger_words = list(v, "trigger_words", TRIGGER_WORDS)?
                .iter()
                .map(|w| {
                    text::clean(w, &TextRule::TRIGGER_WORD)
                        .map_err(|e| err("trigger_words", e.to_string()))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = input.seed {
            p.seed = int(v, "seed", SEED)?;
        }
        p.prior_preservation = prior_preservation(p.training_type, input)?;
        Ok(p)
    }
}

fn int<T: TryFrom<u64>>(n: u64, field: &str, r: IntRange) -> Result<T, ParamError> {
    if n < r.min || n > r.max {
        return Err(err(
            field,
            format!("{n} is out of range; {}", r.expectation()),
        ));
    }
    if !n.is_multiple_of(r.multiple_of) {
        let m = r.multiple_of;
        return Err(err(
            field,
            format!(
                "{n} is not a multiple of {m}; use e.g. {}",
                (n / m).max(1) * m
            ),
        ));
    }
    T::try_from(n).map_err(|_| err(field, r.expectation()))
}

fn float(f: f64, field: &str, r: FloatRange) -> Result<f64, ParamError> {
    if !f.is_finite() || f < r.min || f > r.max {
        return Err(err(
            field,
            format!(
                "{f:e} is out of range; use a value from {:e} to {:e}",
                r.min, r.max
            ),
        ));
    }
    Ok(f)
}

fn chars_ok(s: &str, t: Text) -> bool {
    (t.min_chars..=t.max_chars).contains(&s.chars().count())
}

fn text_in(s: &str, field: &str, t: Text) -> Result<String, ParamError> {
    if !chars_ok(s, t) {
        return Err(err(
            field,
            format!("must be {} to {} characters", t.min_chars, t.max_chars),
        ));
    }
    Ok(s.to_owned())
}

fn list(items: &[String], field: &str, rule: ListRule) -> Result<Vec<String>, ParamError> {
    let ListRule {
        min_items,
        max_items,
        item,
        allowed,
        unique,
    } = rule;
    if items.len() < min_items || items.len() > max_items {
        return Err(err(
            field,
            format!(
                "must have {min_items} to {max_items} entries, got {}",
                items.len()
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    items
        .iter()
        .map(|s| {
            if !chars_ok(s, item) || allowed.is_some_and(|a| !a.contains(&s.as_str())) {
                let hint = allowed
                    .map(|a| format!("; allowed: {}", a.join(", ")))
                    .unwrap_or_default();
                Err(err(field, format!("{s:?} is not an allowed entry{hint}")))
            } else if unique && !seen.insert(s.as_str()) {
                Err(err(field, format!("{s} is listed twice")))
            } else {
                Ok(s.clone())
            }
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
    fn type_errors_name_the_field_and_the_range() {
        // A whole number may be written as a float (JSON Schema's integer), and only then.
        let p = parse(json!({"rank": 8.0, "steps": 200.0, "seed": 0.0})).unwrap();
        assert_eq!((p.rank, p.steps, p.seed), (8, 200, 0));
        let e = parse(json!({"rank": 1.5})).unwrap_err();
        assert_eq!(e.field, "rank");
        assert_eq!(e.message, "must be a whole number from 4 to 128");
        let e = parse(json!({"optimizer": "sgd"})).unwrap_err();
        assert_eq!(e.field, "optimizer");
        assert!(e.message.contains("adamw_8bit"), "{e}");
        let e = ParamsInput::from_value(json!(5), &ParamLimits::default()).unwrap_err();
        assert_eq!(e.field, "params");
        let e = parse(json!({"lr_warmup_steps": 200, "steps": 100})).unwrap_err();
        assert_eq!(e.field, "lr_warmup_steps");
    }
}
