//! kohya → diffusers: turns a kohya-style SDXL UNet LoRA (`lora_unet_<sgm name with _>` +
//! `.lora_down.weight`, `.lora_up.weight`, `.alpha`; what ai-toolkit and sd-scripts save, and
//! what our trainer writes as `model.kohya.safetensors`) into the diffusers form our trainer
//! writes as `model.safetensors` (`unet.<diffusers module>.lora_A.weight` / `.lora_B.weight`,
//! the alpha in the `lora_adapter_metadata` JSON as `lora_alpha`).
//!
//! The module names are the inverse of `trainer/loraforge_trainer/export.py::sgm_module_name`
//! (the sgm/LDM block numbering kohya-ss uses for SDXL), which needs the UNet's
//! `layers_per_block` (2 for SDXL and for our tiny test model). Tensor bytes are copied as they
//! are (same dtype, same shape); the header is parsed with the same bounds checks as
//! [`inspect_lora`](super::inspect_lora). Text-encoder modules, mixed alphas and names that do
//! not map are refused with the offending name, never guessed.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::LoraError;
use super::header::{Header, parse_header};
use super::keys::{LoraFormat, Role, classify};
use super::scan::read_scalar;

/// What the converter needs to know of the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnetLayout {
    /// Resnets per down block (SDXL: 2).
    pub layers_per_block: u32,
}

impl UnetLayout {
    pub const SDXL: UnetLayout = UnetLayout {
        layers_per_block: 2,
    };
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error("not a readable safetensors file: {0}")]
    File(#[from] LoraError),
    #[error(
        "tensor {0:?} is not a kohya UNet LoRA tensor (expected lora_unet_….lora_down.weight, .lora_up.weight or .alpha)"
    )]
    UnknownKey(String),
    #[error("tensor {0:?} belongs to a text encoder; only UNet LoRAs can be converted")]
    TextEncoder(String),
    #[error("kohya module {0:?} has no diffusers SDXL UNet name")]
    UnknownModule(String),
    #[error("module {0:?} lacks its lora_down or lora_up tensor")]
    Unpaired(String),
    #[error("module {module:?} has an alpha that is not a scalar number")]
    BadAlpha { module: String },
    #[error("the modules have different alphas ({0:?}); one alpha for all is needed")]
    MixedAlphas(Vec<f64>),
    #[error("the file holds no LoRA modules")]
    Empty,
}

/// Words of sgm and diffusers module names that themselves contain `_`, longest first.
const COMPOUNDS: &[&str] = &[
    "transformer_blocks",
    "skip_connection",
    "output_blocks",
    "input_blocks",
    "middle_block",
    "emb_layers",
    "out_layers",
    "in_layers",
    "time_embed",
    "label_emb",
    "proj_out",
    "proj_in",
    "to_out",
    "to_q",
    "to_k",
    "to_v",
];

/// `input_blocks_4_1_transformer_blocks_0_attn1_to_q` → `input_blocks.4.1.transformer_blocks.0.attn1.to_q`.
fn dotted(kohya: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut rest = kohya;
    while !rest.is_empty() {
        let compound = COMPOUNDS.iter().find(|c| {
            rest.strip_prefix(**c)
                .is_some_and(|r| r.is_empty() || r.starts_with('_'))
        });
        let word = match compound {
            Some(c) => *c,
            None => rest.split('_').next().unwrap_or(rest),
        };
        parts.push(word.to_owned());
        rest = rest[word.len()..]
            .strip_prefix('_')
            .unwrap_or(&rest[word.len()..]);
    }
    parts.join(".")
}

/// The inverse of export.py's `_RESNET`.
fn resnet(rest: &str) -> Option<String> {
    const MAP: &[(&str, &str)] = &[
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ];
    MAP.iter().find_map(|(sgm, diffusers)| {
        let tail = rest.strip_prefix(sgm)?;
        (tail.is_empty() || tail.starts_with('.')).then(|| format!("{diffusers}{tail}"))
    })
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The inverse of export.py's `sgm_module_name`: an sgm (dotted) UNet module → its diffusers name.
pub fn diffusers_module_name(sgm: &str, layout: UnetLayout) -> Option<String> {
    const TOP: &[(&str, &str)] = &[
        ("input_blocks.0.0", "conv_in"),
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("label_emb.0.0", "add_embedding.linear_1"),
        ("label_emb.0.2", "add_embedding.linear_2"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ];
    if let Some((_, d)) = TOP.iter().find(|(s, _)| *s == sgm) {
        return Some((*d).to_owned());
    }
    let l = layout.layers_per_block;
    let per = l.checked_add(1)?;
    let mut it = sgm.splitn(4, '.');
    let block = it.next()?;
    if block == "middle_block" {
        let k = num(it.next()?)?;
        let rest = [it.next()?, it.next().unwrap_or("")]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(".");
        return match k {
            1 => Some(format!("mid_block.attentions.0.{rest}")),
            0 | 2 => Some(format!("mid_block.resnets.{}.{}", k / 2, resnet(&rest)?)),
            _ => None,
        };
    }
    let n = num(it.next()?)?;
    let m = num(it.next()?)?;
    let rest = it.next().unwrap_or("");
    match block {
        "input_blocks" if n >= 1 => {
            if n % per == 0 {
                // A downsampler: input_blocks.{(i+1)(L+1)}.0.op
                return (m == 0 && rest == "op")
                    .then(|| format!("down_blocks.{}.downsamplers.0.conv", n / per - 1));
            }
            let (i, j) = ((n - 1) / per, (n - 1) % per);
            match m {
                0 => Some(format!("down_blocks.{i}.resnets.{j}.{}", resnet(rest)?)),
                1 if !rest.is_empty() => Some(format!("down_blocks.{i}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let (i, j) = (n / per, n % per);
            // The last layer of an up block carries its upsampler at .1 (no attention) or .2.
            if j == l && rest == "conv" && (m == 1 || m == 2) {
                return Some(format!("up_blocks.{i}.upsamplers.0.conv"));
            }
            match m {
                0 => Some(format!("up_blocks.{i}.resnets.{j}.{}", resnet(rest)?)),
                1 if !rest.is_empty() => Some(format!("up_blocks.{i}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Converts a kohya UNet LoRA file into the diffusers form (a new safetensors file). The source
/// metadata is kept and `lora_adapter_metadata` added (as diffusers writes it).
pub fn kohya_to_diffusers(bytes: &[u8], layout: UnetLayout) -> Result<Vec<u8>, ConvertError> {
    let header = parse_header(bytes)?;
    let mut out: Vec<(String, &super::header::TensorInfo)> = Vec::new();
    let mut modules: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut alphas: Vec<f64> = Vec::new();
    let mut rank = 0u64;
    for t in &header.tensors {
        if t.name.starts_with("lora_te") {
            return Err(ConvertError::TextEncoder(t.name.clone()));
        }
        let Some((format, module, role)) = classify(&t.name) else {
            return Err(ConvertError::UnknownKey(t.name.clone()));
        };
        let Some(kohya) = module.strip_prefix("lora_unet_") else {
            return Err(ConvertError::UnknownKey(t.name.clone()));
        };
        if format.is_some_and(|f| f != LoraFormat::Kohya) {
            return Err(ConvertError::UnknownKey(t.name.clone()));
        }
        let name = diffusers_module_name(&dotted(kohya), layout)
            .ok_or_else(|| ConvertError::UnknownModule(module.to_owned()))?;
        let entry = modules.entry(module.to_owned()).or_default();
        match role {
            Role::Down => {
                entry.0 = true;
                rank = rank.max(t.shape.first().copied().unwrap_or(0));
                out.push((format!("unet.{name}.lora_A.weight"), t));
            }
            Role::Up => {
                entry.1 = true;
                out.push((format!("unet.{name}.lora_B.weight"), t));
            }
            Role::Alpha => {
                let value = (t.numel == 1)
                    .then(|| read_scalar(t.dtype, header.data(bytes, t)))
                    .flatten()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| ConvertError::BadAlpha {
                        module: module.to_owned(),
                    })?;
                if !alphas.iter().any(|a| a.to_bits() == value.to_bits()) {
                    alphas.push(value);
                }
            }
        }
    }
    if let Some((m, _)) = modules.iter().find(|(_, (d, u))| !(*d && *u)) {
        return Err(ConvertError::Unpaired(m.clone()));
    }
    if out.is_empty() {
        return Err(ConvertError::Empty);
    }
    if alphas.len() > 1 {
        alphas.sort_by(f64::total_cmp);
        return Err(ConvertError::MixedAlphas(alphas));
    }
    // No alpha tensors: kohya's rule is alpha = rank (scale 1).
    let alpha = alphas.first().copied().unwrap_or(rank as f64);
    let mut metadata = header.metadata.clone();
    let mut targets: Vec<&str> = out
        .iter()
        .filter_map(|(n, _)| n.strip_suffix(".lora_A.weight"))
        .filter_map(|n| n.strip_prefix("unet."))
        .collect();
    targets.sort_unstable();
    metadata.insert(
        "lora_adapter_metadata".to_owned(),
        json!({
            "unet.r": rank,
            "unet.lora_alpha": alpha,
            "unet.target_modules": targets,
            "unet.lora_dropout": 0.0,
            "unet.init_lora_weights": "gaussian",
            "unet.bias": "none",
        })
        .to_string(),
    );
    Ok(write(&header, bytes, out, metadata))
}

/// A safetensors file of `tensors` (new name, source tensor) with their bytes from `source`.
fn write(
    header: &Header,
    source: &[u8],
    mut tensors: Vec<(String, &super::header::TensorInfo)>,
    metadata: BTreeMap<String, String>,
) -> Vec<u8> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut head = Map::new();
    head.insert(
        "__metadata__".to_owned(),
        Value::Object(
            metadata
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
    );
    let mut offset = 0u64;
    for (name, t) in &tensors {
        let len = t.end - t.begin;
        head.insert(
            name.clone(),
            json!({"dtype": t.dtype.as_str(), "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut json = Value::Object(head).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut file = Vec::with_capacity(8 + json.len() + offset as usize);
    file.extend_from_slice(&(json.len() as u64).to_le_bytes());
    file.extend_from_slice(&json);
    for (_, t) in &tensors {
        file.extend_from_slice(header.data(source, t));
    }
    file
}

#[cfg(test)]
mod tests {
    use super::super::testutil::Writer;
    use super::super::{LoraRules, inspect_lora};
    use super::*;

    #[test]
    fn sgm_names_map_back_to_diffusers() {
        let l = UnetLayout::SDXL;
        let cases = [
            (
                "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            ),
            (
                "input_blocks.5.1.proj_in",
                "down_blocks.1.attentions.1.proj_in",
            ),
            (
                "input_blocks.1.0.in_layers.2",
                "down_blocks.0.resnets.0.conv1",
            ),
            (
                "input_blocks.2.0.emb_layers.1",
                "down_blocks.0.resnets.1.time_emb_proj",
            ),
            (
                "input_blocks.4.0.skip_connection",
                "down_blocks.1.resnets.0.conv_shortcut",
            ),
            ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
            ("input_blocks.6.0.op", "down_blocks.1.downsamplers.0.conv"),
            (
                "middle_block.1.transformer_blocks.9.ff.net.2",
                "mid_block.attentions.0.transformer_blocks.9.ff.net.2",
            ),
            ("middle_block.2.out_layers.3", "mid_block.resnets.1.conv2"),
            ("output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv"),
            ("output_blocks.8.1.conv", "up_blocks.2.upsamplers.0.conv"),
            (
                "output_blocks.4.1.transformer_blocks.0.attn2.to_out.0",
                "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_out.0",
            ),
            (
                "output_blocks.7.0.out_layers.3",
                "up_blocks.2.resnets.1.conv2",
            ),
            ("time_embed.0", "time_embedding.linear_1"),
        ];
        for (sgm, want) in cases {
            assert_eq!(
                diffusers_module_name(sgm, l).as_deref(),
                Some(want),
                "{sgm}"
            );
        }
        for bad in [
            "input_blocks.3.0.in_layers.2",
            "output_blocks.1.3.x",
            "nowhere.1.1",
            "input_blocks.x.1.proj_in",
            "middle_block.5.x",
        ] {
            assert_eq!(diffusers_module_name(bad, l), None, "{bad}");
        }
    }

    #[test]
    fn underscored_names_are_split_at_known_words() {
        assert_eq!(
            dotted("output_blocks_4_1_transformer_blocks_0_attn2_to_out_0"),
            "output_blocks.4.1.transformer_blocks.0.attn2.to_out.0"
        );
        assert_eq!(
            dotted("input_blocks_1_0_in_layers_2"),
            "input_blocks.1.0.in_layers.2"
        );
        assert_eq!(
            dotted("middle_block_1_transformer_blocks_0_ff_net_0_proj"),
            "middle_block.1.transformer_blocks.0.ff.net.0.proj"
        );
    }

    fn kohya_file() -> Vec<u8> {
        Writer::new()
            .meta("format", "pt")
            .meta("loraforge.base_model", "/m")
            .f16(
                "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
                &[4, 8],
            )
            .f16("lora_unet_input_blocks_4_1_proj_in.lora_up.weight", &[8, 4])
            .scalar_f32("lora_unet_input_blocks_4_1_proj_in.alpha", 8.0)
            .f16(
                "lora_unet_output_blocks_2_2_conv.lora_down.weight",
                &[4, 8, 3, 3],
            )
            .f16(
                "lora_unet_output_blocks_2_2_conv.lora_up.weight",
                &[8, 4, 1, 1],
            )
            .scalar_f32("lora_unet_output_blocks_2_2_conv.alpha", 8.0)
            .build()
    }

    #[test]
    fn converts_into_a_diffusers_file_the_check_accepts() {
        let src = kohya_file();
        let out = kohya_to_diffusers(&src, UnetLayout::SDXL).unwrap();
        let report = inspect_lora(
            &out,
            &LoraRules {
                min_bytes: 0,
                ..LoraRules::default()
            },
        )
        .unwrap();
        assert_eq!(report.format, LoraFormat::Diffusers);
        assert_eq!(report.rank, 4);
        assert_eq!(report.alpha, Some(8.0));
        assert_eq!(report.modules, 2);
        let h = parse_header(&out).unwrap();
        let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"unet.down_blocks.1.attentions.0.proj_in.lora_A.weight"));
        assert!(names.contains(&"unet.up_blocks.0.upsamplers.0.conv.lora_B.weight"));
        assert_eq!(
            h.metadata.get("loraforge.base_model").map(String::as_str),
            Some("/m")
        );
        assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        // The bytes are the source's.
        let src_h = parse_header(&src).unwrap();
        let a = src_h
            .tensors
            .iter()
            .find(|t| t.name == "lora_unet_input_blocks_4_1_proj_in.lora_down.weight")
            .unwrap();
        let b = h
            .tensors
            .iter()
            .find(|t| t.name == "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight")
            .unwrap();
        assert_eq!(src_h.data(&src, a), h.data(&out, b));
        assert_eq!(b.shape, vec![4, 8]);
    }

    #[test]
    fn hostile_inputs_are_refused_with_the_reason() {
        let l = UnetLayout::SDXL;
        assert!(matches!(
            kohya_to_diffusers(b"garbage", l),
            Err(ConvertError::File(_))
        ));
        let mut truncated = kohya_file();
        truncated.truncate(truncated.len() - 3);
        assert!(matches!(
            kohya_to_diffusers(&truncated, l),
            Err(ConvertError::File(_))
        ));
        let unknown = Writer::new().f16("model.weight", &[2, 2]).build();
        assert_eq!(
            kohya_to_diffusers(&unknown, l),
            Err(ConvertError::UnknownKey("model.weight".into()))
        );
        let te = Writer::new()
            .f16(
                "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                &[4, 8],
            )
            .build();
        assert!(matches!(
            kohya_to_diffusers(&te, l),
            Err(ConvertError::TextEncoder(_))
        ));
        let nowhere = Writer::new()
            .f16("lora_unet_nowhere_1_1_x.lora_down.weight", &[4, 8])
            .f16("lora_unet_nowhere_1_1_x.lora_up.weight", &[8, 4])
            .build();
        assert!(matches!(
            kohya_to_diffusers(&nowhere, l),
            Err(ConvertError::UnknownModule(_))
        ));
        let unpaired = Writer::new()
            .f16(
                "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
                &[4, 8],
            )
            .build();
        assert!(matches!(
            kohya_to_diffusers(&unpaired, l),
            Err(ConvertError::Unpaired(_))
        ));
        let mixed = Writer::new()
            .f16(
                "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
                &[4, 8],
            )
            .f16("lora_unet_input_blocks_4_1_proj_in.lora_up.weight", &[8, 4])
            .scalar_f32("lora_unet_input_blocks_4_1_proj_in.alpha", 8.0)
            .f16(
                "lora_unet_input_blocks_4_1_proj_out.lora_down.weight",
                &[4, 8],
            )
            .f16(
                "lora_unet_input_blocks_4_1_proj_out.lora_up.weight",
                &[8, 4],
            )
            .scalar_f32("lora_unet_input_blocks_4_1_proj_out.alpha", 4.0)
            .build();
        assert!(matches!(
            kohya_to_diffusers(&mixed, l),
            Err(ConvertError::MixedAlphas(_))
        ));
        let nan_alpha = Writer::new()
            .f16(
                "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
                &[4, 8],
            )
            .f16("lora_unet_input_blocks_4_1_proj_in.lora_up.weight", &[8, 4])
            .scalar_f32("lora_unet_input_blocks_4_1_proj_in.alpha", f32::NAN)
            .build();
        assert!(matches!(
            kohya_to_diffusers(&nan_alpha, l),
            Err(ConvertError::BadAlpha { .. })
        ));
        let empty = Writer::new().build();
        assert!(kohya_to_diffusers(&empty, l).is_err());
    }
}
