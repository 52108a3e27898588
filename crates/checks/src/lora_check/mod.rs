//! Trained-LoRA checks (training flow step 12): before a `.safetensors` file is published, its
//! header must be sound (`header`), its tensors must form a LoRA in a convention we know
//! (`keys`), with one rank and consistent shapes, and — when asked — every float value must be
//! finite (`scan`). Works on a byte slice (the caller may memory-map the file), reads tensor
//! data only for alpha scalars and the value scan, and never panics.

mod dtype;
mod error;
mod header;
mod keys;
mod kohya;
mod scan;
mod unet_names;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_keys;
#[cfg(test)]
mod testutil;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use error::LoraError;
pub use header::MAX_HEADER_BYTES;
pub use keys::LoraFormat;
pub use kohya::{ConvertError, UnetLayout, diffusers_module_name, kohya_to_diffusers};
pub use scan::NonFiniteTensor;

/// How many offending modules or tensors an error names.
const EXAMPLES: usize = 5;

/// Metadata keys copied into `LoraReport::hints` when present.
const HINT_KEYS: &[&str] = &[
    "loraforge.base_model",
    "loraforge.trainer",
    "loraforge.version",
    "modelspec.architecture",
    "modelspec.implementation",
    "modelspec.title",
    "ss_base_model_version",
    "ss_sd_model_name",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
];
/// First present key wins.
const BASE_MODEL_KEYS: &[&str] = &[
    "loraforge.base_model",
    "modelspec.architecture",
    "ss_base_model_version",
    "ss_sd_model_name",
];
const TRAINER_KEYS: &[&str] = &[
    "loraforge.trainer",
    "modelspec.implementation",
    "ss_network_module",
];

/// What a published LoRA file must satisfy. Sizes in bytes, inclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoraRules {
    pub min_bytes: u64,
    pub max_bytes: u64,
    /// Read every F16/BF16/F32/F64 value and refuse NaN or Inf.
    pub scan_values: bool,
}

impl Default for LoraRules {
    /// PRD 4 step 12: 5–200 MB.
    fn default() -> Self {
        Self {
            min_bytes: 5 * 1024 * 1024,
            max_bytes: 200 * 1024 * 1024,
            scan_values: true,
        }
    }
}

/// Where the reported alpha came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlphaSource {
    /// Every module's `.alpha` tensor, all equal.
    Tensors,
    /// diffusers' `lora_adapter_metadata` (`lora_alpha`).
    AdapterMetadata,
    /// Modules disagree, or only some carry an alpha; see `alphas`.
    Mixed,
    Unknown,
}

/// A LoRA file that passed every check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraReport {
    pub format: LoraFormat,
    /// Adapted layers (down/up pairs).
    pub modules: usize,
    pub rank: u64,
    /// The common alpha, when there is one.
    pub alpha: Option<f64>,
    pub alpha_source: AlphaSource,
    /// Distinct alpha values found in `.alpha` tensors.
    pub alphas: Vec<f64>,
    /// Tensor count per dtype name (`F16`, …).
    pub dtypes: BTreeMap<String, usize>,
    /// File size.
    pub total_bytes: u64,
    pub header_bytes: u64,
    pub tensors: usize,
    /// Tensors that are not LoRA down/up/alpha (e.g. DoRA scales); kept, not refused.
    pub other_tensors: usize,
    /// Elements across all tensors.
    pub parameters: u64,
    pub metadata: BTreeMap<String, String>,
    /// Selected metadata entries that say what was trained and how.
    pub hints: BTreeMap<String, String>,
    pub base_model_hint: Option<String>,
    pub trainer_hint: Option<String>,
    /// Whether values were scanned for NaN/Inf (they were all finite if so).
    pub values_scanned: bool,
}

/// Checks a whole `.safetensors` file held in memory.
pub fn inspect_lora(bytes: &[u8], rules: &LoraRules) -> Result<LoraReport, LoraError> {
    let total_bytes = bytes.len() as u64;
    if total_bytes < rules.min_bytes {
        return Err(LoraError::TooSmall {
            bytes: total_bytes,
            min: rules.min_bytes,
        });
    }
    if total_bytes > rules.max_bytes {
        return Err(LoraError::TooLarge {
            bytes: total_bytes,
            max: rules.max_bytes,
        });
    }
    let header = header::parse_header(bytes)?;
    let grouping = keys::group(&header.tensors);
    let format = grouping.format().ok_or(LoraError::NoLoraTensors {
        tensors: header.tensors.len(),
    })?;

    // Pairs and shapes.
    let unpaired: Vec<&str> = grouping
        .modules
        .iter()
        .filter(|(_, m)| m.down.is_none() || m.up.is_none())
        .map(|(n, _)| *n)
        .collect();
    if !unpaired.is_empty() {
        return Err(LoraError::Unpaired {
            count: unpaired.len(),
            examples: unpaired
                .iter()
                .take(EXAMPLES)
                .map(|s| (*s).to_owned())
                .collect(),
        });
    }
    let mut ranks = BTreeSet::new();
    for (name, m) in &grouping.modules {
        let (Some(down), Some(up)) = (m.down, m.up) else {
            continue;
        };
        ranks.insert(module_rank(name, &down.shape, &up.shape)?);
    }
    let rank = match ranks.len() {
        1 => ranks.first().copied().unwrap_or_default(),
        _ => {
            return Err(LoraError::InconsistentRanks {
                ranks: ranks.into_iter().collect(),
            });
        }
    };

    // Alpha: `.alpha` tensors, else diffusers' adapter metadata.
    let mut alphas: Vec<f64> = Vec::new();
    let mut with_alpha = 0;
    for (name, m) in &grouping.modules {
        let Some(t) = m.alpha else { continue };
        let value = (t.numel == 1)
            .then(|| scan::read_scalar(t.dtype, header.data(bytes, t)))
            .flatten()
            .ok_or_else(|| LoraError::BadAlpha {
                module: (*name).to_owned(),
            })?;
        with_alpha += 1;
        if !alphas.iter().any(|a| a.to_bits() == value.to_bits()) {
            alphas.push(value);
        }
    }
    alphas.sort_by(f64::total_cmp);
    let (alpha, alpha_source) = if with_alpha == 0 {
        match adapter_metadata_alpha(&header.metadata) {
            Some(a) => (Some(a), AlphaSource::AdapterMetadata),
            None => (None, AlphaSource::Unknown),
        }
    } else if with_alpha == grouping.modules.len() && alphas.len() == 1 {
        (Some(alphas[0]), AlphaSource::Tensors)
    } else {
        (None, AlphaSource::Mixed)
    };

    if rules.scan_values {
        let bad = scan::scan_non_finite(bytes, &header);
        if !bad.is_empty() {
            return Err(LoraError::NonFinite {
                count: bad.len(),
                tensors: bad.into_iter().take(EXAMPLES).collect(),
            });
        }
    }

    let mut dtypes = BTreeMap::new();
    for t in &header.tensors {
        *dtypes.entry(t.dtype.as_str().to_owned()).or_default() += 1;
    }
    let pick = |keys: &[&str]| keys.iter().find_map(|k| header.metadata.get(*k)).cloned();
    let hints = HINT_KEYS
        .iter()
        .filter_map(|k| {
            header
                .metadata
                .get(*k)
                .map(|v| ((*k).to_owned(), v.clone()))
        })
        .collect();
    Ok(LoraReport {
        format,
        modules: grouping.modules.len(),
        rank,
        alpha,
        alpha_source,
        alphas,
        dtypes,
        total_bytes,
        header_bytes: (header.data_start - 8) as u64,
        tensors: header.tensors.len(),
        other_tensors: grouping.other_tensors,
        parameters: header
            .tensors
            .iter()
            .map(|t| t.numel)
            .fold(0u64, u64::saturating_add),
        base_model_hint: pick(BASE_MODEL_KEYS),
        trainer_hint: pick(TRAINER_KEYS),
        hints,
        metadata: header.metadata,
        values_scanned: rules.scan_values,
    })
}

/// Rank of one module: linear `down [r, in]`, `up [out, r]`; conv `down [r, in, kh, kw]`,
/// `up [out, r, kh', kw']`. Both must have the same number of dimensions and `r > 0`.
fn module_rank(module: &str, down: &[u64], up: &[u64]) -> Result<u64, LoraError> {
    let fits = down.len() == up.len()
        && matches!(down.len(), 2 | 4)
        && down[0] > 0
        && down[0] == up[1]
        && down.iter().chain(up).all(|&d| d > 0);
    if fits {
        Ok(down[0])
    } else {
        Err(LoraError::ShapeMismatch {
            module: module.to_owned(),
            down: down.to_vec(),
            up: up.to_vec(),
        })
    }
}

/// diffusers (≥ 0.33) stores the PEFT config as JSON under `lora_adapter_metadata`, keys
/// `lora_alpha` or `<component>.lora_alpha`; one value for all components, or none.
fn adapter_metadata_alpha(metadata: &BTreeMap<String, String>) -> Option<f64> {
    let json: serde_json::Value =
        serde_json::from_str(metadata.get("lora_adapter_metadata")?).ok()?;
    let values: Vec<f64> = json
        .as_object()?
        .iter()
        .filter(|(k, _)| *k == "lora_alpha" || k.ends_with(".lora_alpha"))
        .filter_map(|(_, v)| v.as_f64())
        .collect();
    let first = *values.first()?;
    values.iter().all(|v| *v == first).then_some(first)
}
