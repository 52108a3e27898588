//! DreamBooth-LoRA's parameters: `class_prompt`, `num_class_images`, `prior_loss_weight`.

use serde::{Deserialize, Serialize};

use super::rules::TRIMMED_NO_CONTROL;
use super::{
    FloatRange, IntRange, ParamError, ParamsInput, Text, TrainingType, chars_ok, conflict, err,
    float, int,
};

/// DreamBooth-LoRA's prior preservation: the trainer generates `num_class_images` images of
/// `class_prompt` with the base model (cached on the worker host, reused across jobs) and adds
/// their denoising loss, times `prior_loss_weight`, to the instance loss, so the LoRA learns the
/// subject without forgetting what the class looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorPreservation {
    /// What the subject is an instance of, e.g. "a photo of a person" (trimmed, 1 to
    /// [`MAX_CLASS_PROMPT_CHARS`] characters, no control characters).
    pub class_prompt: String,
    pub num_class_images: u32,
    pub prior_loss_weight: f64,
}

impl PriorPreservation {
    pub const DEFAULT_NUM_CLASS_IMAGES: u32 = 50;
    pub const DEFAULT_PRIOR_LOSS_WEIGHT: f64 = 1.0;
}

pub const MAX_CLASS_PROMPT_CHARS: usize = 300;
/// Generating class images is the base model's inference at the training resolution: a few
/// seconds each on a GPU, so 200 adds minutes, not hours, to a job.
pub const NUM_CLASS_IMAGES_RANGE: (u32, u32) = (1, 200);
pub const PRIOR_LOSS_WEIGHT_RANGE: (f64, f64) = (0.01, 10.0);

/// The rules of the three fields ([`super::ParamLimits::rules`]). The prompt is counted after
/// trimming; the schema's pattern asks for it trimmed already.
pub const CLASS_PROMPT: Text = Text {
    min_chars: 1,
    max_chars: MAX_CLASS_PROMPT_CHARS,
    pattern: Some(TRIMMED_NO_CONTROL),
};
pub const NUM_CLASS_IMAGES: IntRange = IntRange::new(
    NUM_CLASS_IMAGES_RANGE.0 as u64,
    NUM_CLASS_IMAGES_RANGE.1 as u64,
);
pub const PRIOR_LOSS_WEIGHT: FloatRange = FloatRange {
    min: PRIOR_LOSS_WEIGHT_RANGE.0,
    max: PRIOR_LOSS_WEIGHT_RANGE.1,
};

pub(super) const DREAMBOOTH_FIELDS: [&str; 3] =
    ["class_prompt", "num_class_images", "prior_loss_weight"];

/// `class_prompt`, `num_class_images` and `prior_loss_weight`: required (the prompt) or
/// defaulted for `dreambooth`, refused for `lora`, where they would silently do nothing.
pub(super) fn prior_preservation(
    training_type: TrainingType,
    input: &ParamsInput,
) -> Result<Option<PriorPreservation>, ParamError> {
    if training_type == TrainingType::Lora {
        let given = [
            input.class_prompt.is_some(),
            input.num_class_images.is_some(),
            input.prior_loss_weight.is_some(),
        ];
        if let Some((field, _)) = DREAMBOOTH_FIELDS.iter().zip(given).find(|(_, g)| *g) {
            return Err(conflict(
                field,
                "is used only with \"type\": \"dreambooth\"; remove it or set the type",
            ));
        }
        return Ok(None);
    }
    let class_prompt = match &input.class_prompt {
        None => {
            return Err(conflict(
                "class_prompt",
                "is required with \"type\": \"dreambooth\": what the subject is an instance of, \
                 e.g. \"a photo of a person\"",
            ));
        }
        Some(raw) => {
            let s = raw.trim();
            if !chars_ok(s, CLASS_PROMPT) {
                return Err(err(
                    "class_prompt",
                    format!(
                        "must have 1 to {MAX_CLASS_PROMPT_CHARS} characters, got {}",
                        s.chars().count()
                    ),
                ));
            }
            if s.chars().any(char::is_control) {
                return Err(err("class_prompt", "must not contain control characters"));
            }
            s.to_owned()
        }
    };
    let num_class_images = match input.num_class_images {
        Some(v) => int(v, "num_class_images", NUM_CLASS_IMAGES)?,
        None => PriorPreservation::DEFAULT_NUM_CLASS_IMAGES,
    };
    let prior_loss_weight = match input.prior_loss_weight {
        Some(v) => float(v, "prior_loss_weight", PRIOR_LOSS_WEIGHT)?,
        None => PriorPreservation::DEFAULT_PRIOR_LOSS_WEIGHT,
    };
    Ok(Some(PriorPreservation {
        class_prompt,
        num_class_images,
        prior_loss_weight,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{ParamErrorKind, ParamLimits, TrainingParams};
    use super::*;
    use serde_json::{Value, json};

    fn parse(v: Value) -> Result<TrainingParams, ParamError> {
        TrainingParams::from_json(v.as_object().unwrap(), &ParamLimits::default())
    }

    #[test]
    fn dreambooth_takes_a_class_prompt_and_defaults_the_rest() {
        let p =
            parse(json!({"type": "dreambooth", "class_prompt": "  a photo of a person "})).unwrap();
        assert_eq!(p.training_type, TrainingType::Dreambooth);
        assert_eq!(
            p.prior_preservation,
            Some(PriorPreservation {
                class_prompt: "a photo of a person".into(),
                num_class_images: 50,
                prior_loss_weight: 1.0,
            })
        );
        let p = parse(json!({"type": "dreambooth", "class_prompt": "a dog",
            "num_class_images": 200, "prior_loss_weight": 0.01}))
        .unwrap();
        let pp = p.prior_preservation.unwrap();
        assert_eq!((pp.num_class_images, pp.prior_loss_weight), (200, 0.01));
        let pp = parse(json!({"type": "dreambooth", "class_prompt": "a dog",
            "num_class_images": 1, "prior_loss_weight": 10}))
        .unwrap()
        .prior_preservation
        .unwrap();
        assert_eq!((pp.num_class_images, pp.prior_loss_weight), (1, 10.0));
    }

    #[test]
    fn dreambooth_fields_are_range_checked() {
        let db = |extra: Value| {
            let mut v = json!({"type": "dreambooth", "class_prompt": "a dog"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse(v).unwrap_err()
        };
        for (extra, field) in [
            (json!({"num_class_images": 0}), "num_class_images"),
            (json!({"num_class_images": 201}), "num_class_images"),
            (json!({"num_class_images": "50"}), "num_class_images"),
            (json!({"prior_loss_weight": 0.0}), "prior_loss_weight"),
            (json!({"prior_loss_weight": 10.5}), "prior_loss_weight"),
            (json!({"prior_loss_weight": "1"}), "prior_loss_weight"),
            (json!({"class_prompt": ""}), "class_prompt"),
            (json!({"class_prompt": "   "}), "class_prompt"),
            (json!({"class_prompt": "a\u{7}dog"}), "class_prompt"),
            (json!({"class_prompt": "x".repeat(301)}), "class_prompt"),
            (json!({"class_prompt": 5}), "class_prompt"),
        ] {
            let e = db(extra.clone());
            assert_eq!(
                (e.field.as_str(), e.kind),
                (field, ParamErrorKind::Invalid),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn combinations_the_trainer_cannot_train_are_incompatible() {
        let e = parse(json!({"type": "dreambooth"})).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.kind),
            ("class_prompt", ParamErrorKind::Incompatible)
        );
        assert!(e.message.contains("a photo of a person"), "{e}");
        for field in DREAMBOOTH_FIELDS {
            for ty in [json!("lora"), Value::Null] {
                let mut v = json!({"type": ty});
                v[field] = json!(if field == "class_prompt" {
                    json!("a dog")
                } else {
                    json!(1)
                });
                let e = parse(v.clone()).unwrap_err();
                assert_eq!(
                    (e.field.as_str(), e.kind),
                    (field, ParamErrorKind::Incompatible),
                    "{v}"
                );
            }
        }
        // null means absent, as for every other field
        assert!(parse(json!({"class_prompt": null, "num_class_images": null})).is_ok());
    }

    #[test]
    fn a_lora_serializes_without_dreambooth_fields() {
        let v = serde_json::to_value(parse(json!({})).unwrap()).unwrap();
        for field in DREAMBOOTH_FIELDS {
            assert!(v.get(field).is_none(), "{field} in {v}");
        }
        // a LoRA stored before DreamBooth existed still reads
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("class_prompt");
        let back: TrainingParams = serde_json::from_value(old).unwrap();
        assert_eq!(back.prior_preservation, None);
    }
}
