//! kohya → diffusers: turns an SDXL UNet LoRA as kohya-style tools save it into the diffusers
//! form our trainer writes as `model.safetensors` (`unet.<diffusers module>.lora_A.weight` /
//! `.lora_B.weight`, the alpha in the `lora_adapter_metadata` JSON as `lora_alpha`).
//!
//! Accepted UNet key forms (module + `.lora_down.weight`, `.lora_up.weight`, optional `.alpha`,
//! unless noted), which may not name the same module twice:
//! - sgm/LDM names, as sd-scripts, our trainer's `model.kohya.safetensors` and ai-toolkit before
//!   July 2024 (its `stable_diffusion_locon_sdxl.json` keymap) write:
//!   `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k`. The names are the inverse of
//!   `trainer/loraforge_trainer/export.py::sgm_module_name`, which needs the UNet's
//!   `layers_per_block` (2 for SDXL and for our tiny test model).
//! - diffusers module paths flattened with `_`, what ai-toolkit writes for SDXL since it dropped
//!   that keymap (`toolkit/lora_special.py` names each module `lora_unet` + its diffusers path
//!   with `.` → `_`): `lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k`.
//!   The `_` are resolved against the SDXL UNet's module grammar ([`super::unet_names`]).
//! - ai-toolkit's `peft_format` (a `network_kwargs` option): `unet.<diffusers path>` +
//!   `.lora_A.weight` / `.lora_B.weight` and no alpha (ai-toolkit then trains with alpha = rank).
//!
//! Text-encoder LoRA tensors (`lora_te_`, `lora_te1_`, `lora_te2_`, `text_encoder.`,
//! `text_encoder_2.`; ai-toolkit writes them when `train_text_encoder` is on) are refused, since
//! our trainer and inference apply a UNet LoRA only and dropping a trained text encoder would
//! change what the LoRA does — unless every text-encoder module is a no-op (its down or up
//! weights all zero), in which case they are dropped and the count is recorded in the output's
//! `loraforge.dropped_text_encoder_modules` metadata.
//!
//! Tensor bytes are copied as they are (same dtype, same shape); the header is parsed with the
//! same bounds checks as [`inspect_lora`](super::inspect_lora). Mixed alphas and names that do
//! not map are refused with the offending name, never guessed. Without alpha tensors the alpha
//! is the rank (scale 1), as kohya and PEFT-format ai-toolkit files mean it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::LoraError;
use super::header::{Header, parse_header};
use super::keys::{Role, classify};
use super::scan::{all_zero, read_scalar};
use super::unet_names::{Resolved, index, is_unet_module, resolve_flat};

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
        "tensor {0:?} is not an SDXL UNet LoRA tensor (expected lora_unet_<module>.lora_down.weight, .lora_up.weight or .alpha, or unet.<module>.lora_A.weight / .lora_B.weight)"
    )]
    UnknownKey(String),
    #[error(
        "tensor {0:?} is a trained text-encoder LoRA weight; only UNet LoRAs can be converted (retrain with the text encoder off)"
    )]
    TextEncoder(String),
    #[error("module {0:?} has no diffusers SDXL UNet name")]
    UnknownModule(String),
    #[error("module {name:?} could be any of the UNet modules {candidates:?}")]
    AmbiguousModule {
        name: String,
        candidates: Vec<String>,
    },
    #[error("modules {0:?} and {1:?} are the same UNet module ({2})")]
    DuplicateModule(String, String, String),
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

/// The inverse of export.py's `sgm_module_name`: an sgm (dotted) UNet module → its diffusers
/// name, when that is a module of the UNet grammar ([`is_unet_module`]).
pub fn diffusers_module_name(sgm: &str, layout: UnetLayout) -> Option<String> {
    sgm_to_diffusers(sgm, layout).filter(|name| is_unet_module(name, layout))
}

fn sgm_to_diffusers(sgm: &str, layout: UnetLayout) -> Option<String> {
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
        let k = index(it.next()?)?;
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
    let n = index(it.next()?)?;
    let m = index(it.next()?)?;
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

/// Text-encoder prefixes (kohya, ai-toolkit's PEFT format, diffusers).
const TEXT_ENCODER_PREFIXES: &[&str] = &[
    "lora_te_",
    "lora_te1_",
    "lora_te2_",
    "lora_te.",
    "lora_te1.",
    "lora_te2.",
    "text_encoder.",
    "text_encoder_2.",
];

/// The diffusers UNet module (dotted, no `unet.`) a LoRA module name stands for.
fn unet_module(module: &str, tensor: &str, layout: UnetLayout) -> Result<String, ConvertError> {
    if let Some(dotted_name) = module.strip_prefix("unet.") {
        return is_unet_module(dotted_name, layout)
            .then(|| dotted_name.to_owned())
            .ok_or_else(|| ConvertError::UnknownModule(module.to_owned()));
    }
    let Some(flat) = module.strip_prefix("lora_unet_") else {
        return Err(ConvertError::UnknownKey(tensor.to_owned()));
    };
    // sgm names start with input_blocks/middle_block/output_blocks/time_embed/label_emb/out,
    // diffusers paths never do, so at most one of the two can match.
    if let Some(name) = diffusers_module_name(&dotted(flat), layout) {
        return Ok(name);
    }
    match resolve_flat(flat, layout) {
        Resolved::One(name) => Ok(name),
        Resolved::Many(candidates) => Err(ConvertError::AmbiguousModule {
            name: module.to_owned(),
            candidates,
        }),
        Resolved::None => Err(ConvertError::UnknownModule(module.to_owned())),
    }
}

/// A module's tensors as the converter collects them.
#[derive(Default)]
struct Seen {
    source: String,
    down: bool,
    up: bool,
}

/// A text-encoder module: for each of down and up, `Some(all zero)` once seen.
#[derive(Default)]
struct TextEncoderModule<'a> {
    down: Option<(bool, &'a str)>,
    up: Option<bool>,
}

/// Converts an SDXL UNet LoRA file in one of the forms above into the diffusers form (a new
/// safetensors file). The source metadata is kept and `lora_adapter_metadata` added (as
/// diffusers writes it).
pub fn kohya_to_diffusers(bytes: &[u8], layout: UnetLayout) -> Result<Vec<u8>, ConvertError> {
    let header = parse_header(bytes)?;
    let mut out: Vec<(String, &super::header::TensorInfo)> = Vec::new();
    let mut modules: BTreeMap<String, Seen> = BTreeMap::new();
    let mut text_encoder: BTreeMap<&str, TextEncoderModule> = BTreeMap::new();
    let mut alphas: Vec<f64> = Vec::new();
    let mut rank = 0u64;
    for t in &header.tensors {
        let Some((_, module, role)) = classify(&t.name) else {
            return Err(ConvertError::UnknownKey(t.name.clone()));
        };
        if TEXT_ENCODER_PREFIXES.iter().any(|p| module.starts_with(p)) {
            let zero = all_zero(t.dtype, header.data(bytes, t));
            let entry = text_encoder.entry(module).or_default();
            match role {
                Role::Down => entry.down = Some((zero, t.name.as_str())),
                Role::Up => entry.up = Some(zero),
                Role::Alpha => {}
            }
            continue;
        }
        let name = unet_module(module, &t.name, layout)?;
        let entry = modules.entry(name.clone()).or_insert_with(|| Seen {
            source: module.to_owned(),
            ..Seen::default()
        });
        if entry.source != module {
            return Err(ConvertError::DuplicateModule(
                entry.source.clone(),
                module.to_owned(),
                name,
            ));
        }
        match role {
            Role::Down => {
                entry.down = true;
                rank = rank.max(t.shape.first().copied().unwrap_or(0));
                out.push((format!("unet.{name}.lora_A.weight"), t));
            }
            Role::Up => {
                entry.up = true;
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
    if let Some(m) = modules.values().find(|m| !(m.down && m.up)) {
        return Err(ConvertError::Unpaired(m.source.clone()));
    }
    for (module, te) in &text_encoder {
        match (te.down, te.up) {
            (Some((down_zero, tensor)), Some(up_zero)) => {
                if !(down_zero || up_zero) {
                    return Err(ConvertError::TextEncoder(tensor.to_owned()));
                }
            }
            _ => return Err(ConvertError::Unpaired((*module).to_owned())),
        }
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
    if !text_encoder.is_empty() {
        metadata.insert(
            "loraforge.dropped_text_encoder_modules".to_owned(),
            text_encoder.len().to_string(),
        );
    }
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
#[path = "tests_kohya.rs"]
mod tests;
