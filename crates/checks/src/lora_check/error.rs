//! Why a LoRA file is refused.

use super::scan::NonFiniteTensor;
use crate::problem::format_bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoraError {
    #[error("the LoRA file is {} but must be at least {} — training probably stopped early or saved only part of the weights", format_bytes(*.bytes), format_bytes(*.min))]
    TooSmall { bytes: u64, min: u64 },
    #[error("the LoRA file is {} but may be at most {} — train with a lower rank or save in half precision", format_bytes(*.bytes), format_bytes(*.max))]
    TooLarge { bytes: u64, max: u64 },
    #[error("the file is {bytes} bytes, too short to hold a safetensors header")]
    Truncated { bytes: u64 },
    #[error(
        "the header length field says {header_len} bytes; it must be between 2 and 100000000 and no more than the {available} bytes that follow — the file is truncated or not a safetensors file"
    )]
    HeaderLength { header_len: u64, available: u64 },
    #[error("the header is not a valid JSON object: {0}")]
    HeaderJson(String),
    #[error("the __metadata__ entry is invalid: {0}")]
    Metadata(String),
    #[error("tensor {name:?} is invalid: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("tensor {name:?} has an unknown dtype {dtype:?}")]
    UnknownDtype { name: String, dtype: String },
    #[error(
        "tensor {name:?} should take {expected} bytes for its shape and dtype, but its offsets span {actual}"
    )]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "tensor {name:?} ends at byte {end} of a data area of {data_len} bytes — the file is truncated"
    )]
    OutOfBounds {
        name: String,
        end: u64,
        data_len: u64,
    },
    #[error("tensors {first:?} and {second:?} share bytes")]
    Overlap { first: String, second: String },
    #[error("tensor {name:?} starts at byte {begin}, leaving unused bytes after byte {expected}")]
    Gap {
        name: String,
        begin: u64,
        expected: u64,
    },
    #[error("{unused} bytes after the last tensor belong to no tensor")]
    TrailingBytes { unused: u64 },
    #[error("the file holds {tensors} tensors but none is a LoRA down/up (lora_A/lora_B) weight")]
    NoLoraTensors { tensors: usize },
    #[error("{count} modules lack their down or up weight, e.g. {}", .examples.join(", "))]
    Unpaired { count: usize, examples: Vec<String> },
    #[error(
        "module {module:?} has down weight {down:?} and up weight {up:?}, which do not fit together"
    )]
    ShapeMismatch {
        module: String,
        down: Vec<u64>,
        up: Vec<u64>,
    },
    #[error("the alpha of module {module:?} is not a single number")]
    BadAlpha { module: String },
    #[error("modules use different ranks {ranks:?}; one LoRA must use one rank")]
    InconsistentRanks { ranks: Vec<u64> },
    #[error("{count} tensors hold NaN or infinite values (training diverged), e.g. {}", describe_non_finite(.tensors))]
    NonFinite {
        count: usize,
        tensors: Vec<NonFiniteTensor>,
    },
}

fn describe_non_finite(tensors: &[NonFiniteTensor]) -> String {
    tensors
        .iter()
        .map(|t| format!("{} ({} NaN, {} Inf)", t.name, t.nan, t.inf))
        .collect::<Vec<_>>()
        .join(", ")
}

impl LoraError {
    /// Stable snake_case identifier.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooSmall { .. } => "too_small_file",
            Self::TooLarge { .. } => "too_large_file",
            Self::Truncated { .. } => "truncated_file",
            Self::HeaderLength { .. } => "bad_header_length",
            Self::HeaderJson(_) => "bad_header_json",
            Self::Metadata(_) => "bad_metadata",
            Self::BadTensor { .. } => "bad_tensor",
            Self::UnknownDtype { .. } => "unknown_dtype",
            Self::SizeMismatch { .. } => "tensor_size_mismatch",
            Self::OutOfBounds { .. } => "tensor_out_of_bounds",
            Self::Overlap { .. } => "overlapping_tensors",
            Self::Gap { .. } => "gap_between_tensors",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::NoLoraTensors { .. } => "no_lora_tensors",
            Self::Unpaired { .. } => "unpaired_lora_tensors",
            Self::ShapeMismatch { .. } => "mismatched_shapes",
            Self::BadAlpha { .. } => "bad_alpha",
            Self::InconsistentRanks { .. } => "inconsistent_ranks",
            Self::NonFinite { .. } => "non_finite_values",
        }
    }

    /// Whether the file looks cut off (a retry of the download may help).
    pub fn is_truncation(&self) -> bool {
        matches!(
            self,
            Self::Truncated { .. } | Self::HeaderLength { .. } | Self::OutOfBounds { .. }
        )
    }
}
