//! Storage keys: where every kind of blob lives in the blob store. The one place keys are made;
//! the sweeps and the worker protocol use these too.

use crate::validation::VALIDATION_IMAGES;
use crate::{DatasetId, LoraId, SampleBatchId, UserId};

/// Validation images live under this prefix (and are swept after 30 days).
pub const VALIDATION_IMAGES_PREFIX: &str = "lora-validation-images/";

/// Training checkpoints live under this prefix while their job trains, and are deleted when it
/// ends.
pub const CHECKPOINTS_PREFIX: &str = "training-checkpoints/";

/// `training-checkpoints/{user}/{lora}/`: every checkpoint of one job.
pub fn checkpoints_of(user: UserId, lora: LoraId) -> String {
    format!("{CHECKPOINTS_PREFIX}{user}/{lora}/")
}

/// `training-checkpoints/{user}/{lora}/attempt-{n}.pt`: the newest checkpoint attempt `n`
/// uploaded (each attempt writes its own key, so a stale attempt can never overwrite a newer
/// one's).
pub fn checkpoint(user: UserId, lora: LoraId, attempt: u32) -> String {
    format!("{}attempt-{attempt}.pt", checkpoints_of(user, lora))
}

/// `datasets/{user}/{dataset}/{nn}.{ext}`: one training image.
pub fn dataset_image(user: UserId, dataset: DatasetId, index: usize, extension: &str) -> String {
    format!("datasets/{user}/{dataset}/{index:02}.{extension}")
}

/// Content-addressed dataset images live under this prefix.
pub const IMAGE_BLOBS_PREFIX: &str = "dataset-images/sha256/";

/// `dataset-images/sha256/{ab}/{sha256}.{ext}`: one stored image, named by the sha256 (lowercase
/// hex) of its stored bytes, so the same bytes are stored once whichever datasets hold them.
pub fn image_blob(sha256_hex: &str, extension: &str) -> String {
    let fan_out = sha256_hex.get(..2).unwrap_or("00");
    format!("{IMAGE_BLOBS_PREFIX}{fan_out}/{sha256_hex}.{extension}")
}

/// Sample images rendered with a completed LoRA live under this prefix (kept with the LoRA).
pub const SAMPLE_IMAGES_PREFIX: &str = "lora-samples/";

/// `lora-samples/{user}/{lora}/{batch}/{i}.png`: image `i` of one sample batch.
pub fn sample_image(user: UserId, lora: LoraId, batch: SampleBatchId, index: usize) -> String {
    format!("{SAMPLE_IMAGES_PREFIX}{user}/{lora}/{batch}/{index}.png")
}

/// Where a LoRA's trained files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputKeys {
    /// `lora-models/{user}/{lora}/model.safetensors` (diffusers keys).
    pub model: String,
    /// `lora-models/{user}/{lora}/model.kohya.safetensors`.
    pub kohya: String,
    /// `lora-validation-images/{user}/{lora}/validation/{i}.png`, in order.
    pub validation: Vec<String>,
}

impl OutputKeys {
    pub fn of(user: UserId, lora: LoraId) -> Self {
        Self {
            model: format!("lora-models/{user}/{lora}/model.safetensors"),
            kohya: format!("lora-models/{user}/{lora}/model.kohya.safetensors"),
            validation: (0..VALIDATION_IMAGES)
                .map(|i| format!("{VALIDATION_IMAGES_PREFIX}{user}/{lora}/validation/{i}.png"))
                .collect(),
        }
    }

    /// The kohya file next to a model file key, if `model` is one.
    pub fn kohya_of(model: &str) -> Option<String> {
        model
            .strip_suffix("model.safetensors")
            .map(|dir| format!("{dir}model.kohya.safetensors"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_prd_layout() {
        let (u, l) = (UserId::new(), LoraId::new());
        let k = OutputKeys::of(u, l);
        assert_eq!(k.model, format!("lora-models/{u}/{l}/model.safetensors"));
        assert_eq!(OutputKeys::kohya_of(&k.model), Some(k.kohya.clone()));
        assert_eq!(
            k.validation[2],
            format!("lora-validation-images/{u}/{l}/validation/2.png")
        );
        assert_eq!(
            checkpoint(u, l, 3),
            format!("training-checkpoints/{u}/{l}/attempt-3.pt")
        );
        assert!(checkpoint(u, l, 3).starts_with(&checkpoints_of(u, l)));
        let hash = "ab".repeat(32);
        assert_eq!(
            image_blob(&hash, "png"),
            format!("dataset-images/sha256/ab/{hash}.png")
        );
        let b = SampleBatchId::new();
        assert_eq!(
            sample_image(u, l, b, 1),
            format!("lora-samples/{u}/{l}/{b}/1.png")
        );
        let d = DatasetId::new();
        assert_eq!(
            dataset_image(u, d, 3, "png"),
            format!("datasets/{u}/{d}/03.png")
        );
    }
}
