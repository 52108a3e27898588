//! The one dataset path. Every way images come in — a multipart upload, a list of URLs, the
//! reference images of a character — ends here: check the set (`checks::check_dataset`, off
//! the async threads), turn rotated images upright, store every image, then record the dataset.
//! A rejected set stores nothing. Images are content-addressed (`keys::image_blob`, the sha256 of
//! the stored bytes): the same bytes are stored once, and an image already in the store is not
//! written again. Keys are claimed in the repository before their bytes are written, so the
//! dataset sweep leaves them alone; a dataset whose insert fails leaves its blobs unreferenced,
//! for the sweep to remove after its grace period (another dataset may share them).

use bytes::Bytes;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use loraforge_checks::{
    DECODE_BUSY, DatasetReport, InputImage, check_dataset_within, decode_cost,
    normalize_orientation,
};
use loraforge_db::DbError;
use loraforge_domain::{DailyWindow, Dataset, DatasetId, DatasetImage, QuotaExceeded, UserId};
use loraforge_storage::StorageError;

use crate::state::AppState;

/// One incoming image with its optional caption.
#[derive(Debug, Clone)]
pub struct IntakeImage {
    pub input: InputImage,
    pub caption: Option<String>,
}

/// A stored dataset and the check report it passed (its warnings are shown to the user).
#[derive(Debug)]
pub struct StoredDataset {
    pub dataset: Dataset,
    pub report: DatasetReport,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The images failed the checks; nothing was stored.
    #[error("the images failed the dataset checks")]
    Rejected(Box<DatasetReport>),
    /// The images could not be checked in time: other checks held the decode budget.
    #[error("the server is busy checking other images")]
    Busy,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// The dataset would pass the owner's daily quota; nothing was recorded.
    #[error("daily dataset quota reached")]
    QuotaReached {
        exceeded: QuotaExceeded,
        window: DailyWindow,
        now: DateTime<Utc>,
    },
    #[error("{0}")]
    Internal(String),
}

impl IntakeError {
    /// Whether the user's images are at fault (as opposed to our storage or database).
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }
}

/// Checks, normalises, stores and records `images` as a new dataset of `user`.
pub async fn store_dataset(
    state: &AppState,
    user: UserId,
    images: Vec<IntakeImage>,
) -> Result<StoredDataset, IntakeError> {
    let rules = state.settings().dataset_rules.clone();
    let budget = state.decode_budget();
    let (captions, inputs): (Vec<Option<String>>, Vec<InputImage>) =
        images.into_iter().map(|i| (i.caption, i.input)).unzip();
    let (inputs, report) = tokio::task::spawn_blocking(move || -> Result<_, IntakeError> {
        let report = check_dataset_within(&inputs, &rules, &budget);
        let busy = report
            .images
            .iter()
            .any(|i| i.errors.iter().any(|p| p.code == DECODE_BUSY));
        if busy {
            return Err(IntakeError::Busy);
        }
        if !report.accepted {
            return Err(IntakeError::Rejected(Box::new(report)));
        }
        let upright = inputs
            .into_iter()
            .zip(&report.images)
            .map(|(mut input, checked)| {
                if checked.orientation != 1 {
                    let format = checked.format.ok_or_else(|| {
                        IntakeError::Internal("accepted image without a format".into())
                    })?;
                    // Decoded and turned: two images' worth of pixels, from the same budget.
                    let cost = decode_cost(&input.bytes)
                        .unwrap_or(0)
                        .saturating_mul(2)
                        .min(budget.total());
                    let _permit = budget.acquire(cost).map_err(|e| match e {
                        loraforge_checks::BudgetError::Busy => IntakeError::Busy,
                        e => IntakeError::Internal(format!(
                            "turning {} upright: {e}",
                            input.file_name
                        )),
                    })?;
                    input.bytes = normalize_orientation(&input.bytes, format, checked.orientation)
                        .map_err(|e| {
                            IntakeError::Internal(format!(
                                "turning {} upright: {e}",
                                input.file_name
                            ))
                        })?;
                }
                Ok(input)
            })
            .collect::<Result<Vec<_>, IntakeError>>()?;
        let hashes: Vec<String> = upright
            .iter()
            .map(|i| hex::encode(Sha256::digest(&i.bytes)))
            .collect();
        Ok((upright.into_iter().zip(hashes).collect::<Vec<_>>(), report))
    })
    .await
    .map_err(|e| IntakeError::Internal(format!("dataset check panicked: {e}")))??;

    let id = DatasetId::new();
    let now = state.now();
    let mut planned = Vec::with_capacity(inputs.len());
    for ((input, sha256), checked) in inputs.into_iter().zip(&report.images) {
        let format = checked
            .format
            .ok_or_else(|| IntakeError::Internal("accepted image without a format".into()))?;
        let key = loraforge_domain::keys::image_blob(&sha256, format.extension());
        planned.push((input, checked, format, key));
    }
    let keys: Vec<String> = planned.iter().map(|p| p.3.clone()).collect();
    state.repo().claim_blobs(&keys, now).await?;
    let mut stored: Vec<DatasetImage> = Vec::with_capacity(planned.len());
    for (idx, ((input, checked, format, key), caption)) in
        planned.into_iter().zip(captions).enumerate()
    {
        // The stored file is what is described: its own size and hash (it differs from the
        // upload when it was turned upright), and the upright dimensions from the check.
        let bytes = input.bytes.len() as u64;
        let content_hash = blake3::hash(&input.bytes).to_hex().to_string();
        put_blob(state, &key, input.bytes).await?;
        stored.push(DatasetImage {
            index: idx as u32,
            file_name: input.file_name,
            format,
            width: checked.width.unwrap_or_default(),
            height: checked.height.unwrap_or_default(),
            bytes,
            content_hash,
            storage_key: key,
            caption,
        });
    }
    let dataset = Dataset {
        id,
        user_id: user,
        images: stored,
        created_at: now,
    };
    let quota = state.settings().dataset_quota;
    match state.repo().insert_dataset_within(&dataset, quota).await {
        Ok(()) => {}
        Err(DbError::DatasetQuotaReached(exceeded)) => {
            return Err(IntakeError::QuotaReached {
                exceeded,
                window: DailyWindow::containing(now),
                now,
            });
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(dataset_id = %id, user_id = %user, images = dataset.images.len(), "dataset stored");
    Ok(StoredDataset { dataset, report })
}

/// Writes one content-addressed blob unless the store holds it already (same key, same size:
/// the key is the hash of the bytes).
async fn put_blob(state: &AppState, key: &str, bytes: Vec<u8>) -> Result<(), IntakeError> {
    if let Some(meta) = state.store().head(key).await?
        && meta.size == bytes.len() as u64
    {
        return Ok(());
    }
    state.store().put(key, Bytes::from(bytes)).await?;
    Ok(())
}
