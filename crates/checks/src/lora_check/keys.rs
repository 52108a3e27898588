//! Tensor-name conventions of the LoRA writers we accept, and pairing each module's down
//! (A) projection with its up (B) projection and optional alpha.
//!
//! - PEFT: `base_model.model.….lora_A.weight` / `….lora_B.weight`.
//! - diffusers: `unet.….lora.down.weight` / `….lora.up.weight` (also the attention-processor
//!   form `…to_q_lora.down.weight`), and newer diffusers files that use PEFT's
//!   `lora_A`/`lora_B` under `unet.`, `text_encoder.`, `text_encoder_2.` or `transformer.`.
//! - kohya (sd-scripts): `lora_unet_…`, `lora_te_…`, `lora_te1_…`, `lora_te2_…` with
//!   `.lora_down.weight`, `.lora_up.weight` and a scalar `.alpha`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::header::TensorInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraFormat {
    Peft,
    Diffusers,
    Kohya,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Down,
    Up,
    Alpha,
}

/// Prefixes under which diffusers stores PEFT-style `lora_A`/`lora_B` tensors.
const DIFFUSERS_PREFIXES: &[&str] = &["unet.", "text_encoder.", "text_encoder_2.", "transformer."];

/// `(format, module, role)` for a LoRA tensor name; `None` for anything else. The format of an
/// `.alpha` tensor is not decided by its name, so it is `None` there.
pub fn classify(name: &str) -> Option<(Option<LoraFormat>, &str, Role)> {
    let is_kohya = name.starts_with("lora_unet_") || name.starts_with("lora_te");
    let dotted_or_kohya = |module: &str| {
        if is_kohya {
            LoraFormat::Kohya
        } else {
            dotted_format(module)
        }
    };
    if let Some(m) = name.strip_suffix(".lora_down.weight") {
        return Some((Some(dotted_or_kohya(m)), m, Role::Down));
    }
    if let Some(m) = name.strip_suffix(".lora_up.weight") {
        return Some((Some(dotted_or_kohya(m)), m, Role::Up));
    }
    if let Some(m) = name.strip_suffix(".lora_A.weight") {
        return Some((Some(peft_or_diffusers(m)), m, Role::Down));
    }
    if let Some(m) = name.strip_suffix(".lora_B.weight") {
        return Some((Some(peft_or_diffusers(m)), m, Role::Up));
    }
    for (suffix, role) in [
        ("lora.down.weight", Role::Down),
        ("lora.up.weight", Role::Up),
    ] {
        let module = name
            .strip_suffix(suffix)
            .and_then(|rest| rest.strip_suffix('.').or_else(|| rest.strip_suffix('_')))
            .filter(|m| !m.is_empty());
        if let Some(m) = module {
            return Some((Some(LoraFormat::Diffusers), m, role));
        }
    }
    if let Some(m) = name.strip_suffix(".alpha") {
        return Some((None, m, Role::Alpha));
    }
    None
}

fn peft_or_diffusers(module: &str) -> LoraFormat {
    if DIFFUSERS_PREFIXES.iter().any(|p| module.starts_with(p)) {
        LoraFormat::Diffusers
    } else {
        LoraFormat::Peft
    }
}

/// kohya-style suffixes on dotted module paths come from diffusers-side converters.
fn dotted_format(module: &str) -> LoraFormat {
    if DIFFUSERS_PREFIXES.iter().any(|p| module.starts_with(p)) {
        LoraFormat::Diffusers
    } else {
        LoraFormat::Kohya
    }
}

/// The tensors of one adapted layer.
#[derive(Debug, Default, Clone)]
pub struct Module<'a> {
    pub down: Option<&'a TensorInfo>,
    pub up: Option<&'a TensorInfo>,
    pub alpha: Option<&'a TensorInfo>,
}

/// What the tensor names say.
#[derive(Debug, Default)]
pub struct Grouping<'a> {
    /// Modules with a down or up tensor, by module name.
    pub modules: BTreeMap<&'a str, Module<'a>>,
    /// Tensors per naming convention, to pick the file's format.
    pub votes: BTreeMap<LoraFormat, usize>,
    /// Tensors that are not LoRA down/up/alpha of a module (DoRA scales, full weights, …).
    pub other_tensors: usize,
}

impl Grouping<'_> {
    /// The convention most tensors follow.
    pub fn format(&self) -> Option<LoraFormat> {
        self.votes.iter().max_by_key(|(_, n)| **n).map(|(f, _)| *f)
    }
}

pub fn group(tensors: &[TensorInfo]) -> Grouping<'_> {
    let mut g = Grouping::default();
    let mut alphas: Vec<(&str, &TensorInfo)> = Vec::new();
    for t in tensors {
        match classify(&t.name) {
            Some((format, module, role)) => {
                if let Some(f) = format {
                    *g.votes.entry(f).or_default() += 1;
                }
                match role {
                    Role::Down => g.modules.entry(module).or_default().down = Some(t),
                    Role::Up => g.modules.entry(module).or_default().up = Some(t),
                    Role::Alpha => alphas.push((module, t)),
                }
            }
            None => g.other_tensors += 1,
        }
    }
    for (module, t) in alphas {
        match g.modules.get_mut(module) {
            Some(m) => m.alpha = Some(t),
            None => g.other_tensors += 1,
        }
    }
    g
}
