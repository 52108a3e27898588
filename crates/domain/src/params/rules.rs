//! What each parameter must be, published: [`ParamLimits::rules`] lists every field of
//! [`ParamsInput`](super::ParamsInput) with its [`Rule`]; the parser checks values against these
//! and the server's OpenAPI schema is written from them.

use super::ParamLimits;
use super::prior::{CLASS_PROMPT, NUM_CLASS_IMAGES, PRIOR_LOSS_WEIGHT};

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

/// Longest `base_model` accepted, in characters (a Hub id is at most 96 + 1 + 96).
pub const MAX_BASE_MODEL_CHARS: usize = 1024;

/// Characters of a string. Counted in `char`s, as the parser counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    pub min_chars: usize,
    pub max_chars: usize,
    /// The parser's character check, as an ECMA-262 regular expression for the API schema
    /// (`None`: any characters the parser's own check allows).
    pub pattern: Option<&'static str>,
}

/// A whole number in `min..=max` that is a multiple of `multiple_of` (1: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntRange {
    pub min: u64,
    pub max: u64,
    pub multiple_of: u64,
}

impl IntRange {
    pub(super) const fn new(min: u64, max: u64) -> Self {
        Self {
            min,
            max,
            multiple_of: 1,
        }
    }

    pub(super) fn expectation(&self) -> String {
        format!("must be a whole number from {} to {}", self.min, self.max)
    }
}

/// A number in `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatRange {
    pub min: f64,
    pub max: f64,
}

/// A list of `min_items..=max_items` strings, each as `item` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListRule {
    pub min_items: usize,
    pub max_items: usize,
    pub item: Text,
    /// The only values an item may take (`None`: any that fits `item`); the schema lists them
    /// as the items' `enum`.
    pub allowed: Option<&'static [&'static str]>,
    /// No value may be listed twice (the schema's `uniqueItems`).
    pub unique: bool,
}

/// What a parameter must be. The parser checks every value against its rule and the API schema
/// publishes the same rule (`loraforge-server`'s `openapi.rs`), so the two cannot drift; each
/// field of [`ParamsInput`] has exactly one, listed by [`ParamLimits::rules`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Int(IntRange),
    Float(FloatRange),
    Text(Text),
    List(ListRule),
    /// One of an enum's values (the schema lists them from the enum itself).
    OneOf,
}

impl Rule {
    /// What a value must look like, for an error about a value of the wrong type.
    pub(super) fn expectation(&self) -> String {
        match self {
            Self::Int(r) => r.expectation(),
            Self::Float(r) => format!("must be a number from {:e} to {:e}", r.min, r.max),
            Self::Text(_) => "must be a string".to_owned(),
            Self::List(_) => "must be a list of strings".to_owned(),
            Self::OneOf => "must be one of the listed values".to_owned(),
        }
    }
}

pub const RANK: IntRange = IntRange::new(4, 128);
pub const ALPHA: IntRange = IntRange::new(1, 128);
pub const DROPOUT: FloatRange = FloatRange { min: 0.0, max: 0.9 };
pub const LEARNING_RATE: FloatRange = FloatRange {
    min: 1e-6,
    max: 1e-2,
};
pub const BATCH_SIZE: IntRange = IntRange::new(1, 8);
/// At most the run's `steps` as well (checked after `steps`).
pub const LR_WARMUP_STEPS: IntRange = IntRange::new(0, MAX_STEPS as u64);
pub const SEED: IntRange = IntRange::new(0, MAX_SEED);
pub const BASE_MODEL: Text = Text {
    min_chars: 1,
    max_chars: MAX_BASE_MODEL_CHARS,
    pattern: None,
};
/// Each of [`TARGET_MODULES`], at most once.
pub const TARGET_MODULE_LIST: ListRule = ListRule {
    min_items: 1,
    max_items: TARGET_MODULES.len(),
    item: Text {
        min_chars: 1,
        max_chars: 64,
        pattern: None,
    },
    allowed: Some(&TARGET_MODULES),
    unique: true,
};
/// Trimmed (at least one character that is not white space at each end), without control
/// characters. (No `\p{…}`: the schema's readers include Python's `re`.)
pub(super) const TRIMMED_NO_CONTROL: &str = "^[^\\s\\u0000-\\u001f\\u007f-\\u009f](?:[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f])?$";
/// Each word trimmed, without control characters.
pub const TRIGGER_WORDS: ListRule = ListRule {
    min_items: 0,
    max_items: 10,
    item: Text {
        min_chars: 1,
        max_chars: 64,
        pattern: Some(TRIMMED_NO_CONTROL),
    },
    allowed: None,
    unique: false,
};

impl ParamLimits {
    /// At least 1 whatever the configured floor: the trainer cannot train 0 steps.
    pub fn steps(&self) -> IntRange {
        IntRange::new(u64::from(self.min_steps.max(1)), u64::from(MAX_STEPS))
    }

    /// At least 64 whatever the configured floor: the trainer's smallest resolution.
    pub fn resolution(&self) -> IntRange {
        IntRange {
            min: u64::from(self.min_resolution.max(64)),
            max: u64::from(MAX_RESOLUTION),
            multiple_of: 64,
        }
    }

    /// Every field of a request's `params` with its rule, in the order of [`ParamsInput`]. The
    /// one list the API schema's constraints come from; a field missing here fails the schema
    /// test in `loraforge-server`.
    pub fn rules(&self) -> Vec<(&'static str, Rule)> {
        vec![
            ("base_model", Rule::Text(BASE_MODEL)),
            ("type", Rule::OneOf),
            ("rank", Rule::Int(RANK)),
            ("alpha", Rule::Int(ALPHA)),
            ("dropout", Rule::Float(DROPOUT)),
            ("target_modules", Rule::List(TARGET_MODULE_LIST)),
            ("steps", Rule::Int(self.steps())),
            ("learning_rate", Rule::Float(LEARNING_RATE)),
            ("batch_size", Rule::Int(BATCH_SIZE)),
            ("optimizer", Rule::OneOf),
            ("lr_scheduler", Rule::OneOf),
            ("lr_warmup_steps", Rule::Int(LR_WARMUP_STEPS)),
            ("resolution", Rule::Int(self.resolution())),
            ("trigger_words", Rule::List(TRIGGER_WORDS)),
            ("seed", Rule::Int(SEED)),
            ("class_prompt", Rule::Text(CLASS_PROMPT)),
            ("num_class_images", Rule::Int(NUM_CLASS_IMAGES)),
            ("prior_loss_weight", Rule::Float(PRIOR_LOSS_WEIGHT)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::{ParamError, ParamsInput, TrainingParams, prior};
    use super::*;

    fn parse(v: Value) -> Result<TrainingParams, ParamError> {
        TrainingParams::from_json(v.as_object().unwrap(), &ParamLimits::default())
    }

    /// Every rule [`ParamLimits::rules`] publishes is the one the parser enforces: its edges are
    /// accepted and one step past them is refused, naming the field. With the server's schema
    /// test (rules = schema), the schema cannot promise what the parser refuses.
    #[test]
    fn the_published_rules_are_the_ones_enforced() {
        let limits = ParamLimits::default();
        let rules = limits.rules();
        let fields: Vec<&str> = rules.iter().map(|(f, _)| *f).collect();
        let input_fields: Vec<String> = serde_json::to_value(ParamsInput::default())
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut input_fields = input_fields;
        input_fields.sort_unstable();
        let mut sorted = fields.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, input_fields, "every input field has one rule");
        let ok = |field: &str, v: Value| {
            let mut m = json!({});
            // lr_warmup_steps is also bounded by steps: give it the longest run.
            if field == "lr_warmup_steps" {
                m["steps"] = json!(MAX_STEPS);
            }
            // DreamBooth's fields exist only for a dreambooth, which needs a class prompt.
            if prior::DREAMBOOTH_FIELDS.contains(&field) {
                m["type"] = json!("dreambooth");
                m["class_prompt"] = json!("a dog");
            }
            m[field] = v;
            TrainingParams::from_json(m.as_object().unwrap(), &limits)
        };
        let refused = |field: &str, v: Value| {
            let e = ok(field, v.clone()).expect_err(&format!("{field}={v} is refused"));
            assert_eq!(e.field, field, "{field}={v}: {e}");
        };
        let item = |t: Text, n: usize| "a".repeat(n.max(t.min_chars));
        for (field, rule) in rules {
            match rule {
                Rule::Int(r) => {
                    ok(field, json!(r.min)).unwrap();
                    ok(field, json!(r.max)).unwrap();
                    if r.min > 0 {
                        refused(field, json!(r.min - 1));
                    }
                    if r.max < u64::MAX {
                        refused(field, json!(r.max + 1));
                    }
                    if r.multiple_of > 1 {
                        refused(field, json!(r.max - r.multiple_of / 2));
                    }
                    refused(field, json!(-1));
                    refused(field, json!(1.5));
                    refused(field, json!("8"));
                }
                Rule::Float(r) => {
                    ok(field, json!(r.min)).unwrap();
                    ok(field, json!(r.max)).unwrap();
                    refused(field, json!(r.min - r.max.max(1e-3) * 1e-3));
                    refused(field, json!(r.max * 1.001));
                    refused(field, json!("0.1"));
                }
                Rule::Text(t) => {
                    refused(field, json!("a".repeat(t.max_chars + 1)));
                    if t.min_chars > 0 {
                        refused(field, json!("a".repeat(t.min_chars - 1)));
                    }
                    refused(field, json!(5));
                }
                Rule::List(l) => {
                    // n entries: the allowed values in turn, or n distinct (if need be) words.
                    let list = |n: usize| match l.allowed {
                        Some(a) => json!((0..n).map(|i| a[i % a.len()]).collect::<Vec<_>>()),
                        None if l.unique => json!(
                            (0..n)
                                .map(|i| format!("{}{i}", item(l.item, 1)))
                                .collect::<Vec<_>>()
                        ),
                        None => json!(vec![item(l.item, 1); n]),
                    };
                    ok(field, list(l.min_items)).unwrap();
                    ok(field, list(l.max_items)).unwrap();
                    refused(field, list(l.max_items + 1));
                    if l.min_items > 0 {
                        refused(field, list(l.min_items - 1));
                    }
                    match l.allowed {
                        Some(a) => {
                            for v in a {
                                ok(field, json!([v])).unwrap();
                            }
                            refused(field, json!(["no_such_value"]));
                        }
                        None => {
                            ok(field, json!([item(l.item, l.item.max_chars)])).unwrap();
                        }
                    }
                    if l.unique {
                        let first = list(1)[0].clone();
                        refused(field, json!([first, first]));
                    }
                    refused(field, json!([item(l.item, l.item.max_chars + 1)]));
                    refused(field, json!([""]));
                    refused(field, json!("not a list"));
                }
                Rule::OneOf => refused(field, json!("no_such_value")),
            }
        }
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

    /// Whatever the operator sets, a run has at least 1 step and a 64-pixel resolution: the
    /// trainer's floors, published as the rules' minimums.
    #[test]
    fn the_floors_hold_whatever_the_operator_sets() {
        let limits = ParamLimits {
            min_steps: 0,
            min_resolution: 0,
            ..ParamLimits::default()
        };
        assert_eq!((limits.steps().min, limits.resolution().min), (1, 64));
        let parse0 = |v: Value| TrainingParams::from_json(v.as_object().unwrap(), &limits);
        assert_eq!(parse0(json!({"steps": 0})).unwrap_err().field, "steps");
        assert_eq!(
            parse0(json!({"resolution": 0})).unwrap_err().field,
            "resolution"
        );
        assert_eq!(
            parse0(json!({"steps": 1, "resolution": 64})).unwrap().steps,
            1
        );
    }
}
