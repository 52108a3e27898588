//! File checks at the service's trust boundary: whether a user's images may be trained on
//! (`image_check`, PRD 2 "Dataset Validation") and whether a trained `.safetensors` file may be
//! published (`lora_check`, training flow step 12). Everything here works on bytes the caller
//! hands in — no file or network I/O — and never panics on any input, so both entry points can
//! be fuzzed directly.

pub mod budget;
pub mod image_check;
pub mod lora_check;
pub mod normalize;
pub mod problem;

pub use budget::{BudgetError, DecodeBudget, DecodePermit};
pub use image_check::{
    DECODE_BUSY, DatasetReport, ImageReport, InputImage, check_dataset, check_dataset_within,
    check_image, check_image_within, decode_cost,
};
pub use lora_check::{
    AlphaSource, ConvertError, LoraError, LoraFormat, LoraReport, LoraRules, NonFiniteTensor,
    UnetLayout, inspect_lora, kohya_to_diffusers,
};
pub use normalize::{NormalizeError, normalize_orientation};
pub use problem::Problem;
