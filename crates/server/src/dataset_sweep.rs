//! The dataset sweep (issue 9 item 5): datasets no LoRA uses are deleted after
//! `dataset_retention.unused_after` (default 7 days); the images of datasets whose LoRAs all
//! finished are removed after `trained_images_after` (default: kept); then the image blobs nothing
//! references any more are deleted from the store. LoRA files are never touched: only keys under
//! the image-blob table are deleted. One steppable call with the time passed in; one replica at a
//! time (a `maintenance_leases` lease).

use std::time::Duration;

use chrono::{DateTime, Utc};

use loraforge_db::{DatasetCutoffs, Repository};
use loraforge_domain::{DatasetId, DatasetRetention};
use loraforge_storage::BlobStore;

/// How long a fresh claim on a blob keeps the sweep off it: longer than any intake takes from
/// claiming its keys to recording its dataset.
pub const BLOB_CLAIM_GRACE: Duration = Duration::from_secs(6 * 3600);

/// How long one replica holds the sweep.
const SWEEP_LEASE: Duration = Duration::from_secs(15 * 60);

/// Rows handled per round (the sweep repeats rounds until a round finds less).
const BATCH: u32 = 500;

/// What one dataset sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DatasetSweepReport {
    /// Whether this replica held the sweep's lease.
    pub swept: bool,
    /// Datasets no LoRA used, deleted.
    pub datasets_deleted: Vec<DatasetId>,
    /// Datasets whose finished LoRAs' images were removed.
    pub images_removed: Vec<DatasetId>,
    /// Blob keys whose bytes were deleted.
    pub blobs_deleted: Vec<String>,
    pub errors: Vec<String>,
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// One sweep at `now` on behalf of `holder` (this replica's name in the lease).
pub async fn sweep_datasets(
    repo: &dyn Repository,
    store: &dyn BlobStore,
    retention: DatasetRetention,
    holder: &str,
    now: DateTime<Utc>,
) -> DatasetSweepReport {
    let mut report = DatasetSweepReport::default();
    match repo
        .try_lease("dataset_sweep", holder, now + chrono(SWEEP_LEASE), now)
        .await
    {
        Ok(true) => report.swept = true,
        Ok(false) => return report,
        Err(e) => {
            report.errors.push(format!("taking the sweep's lease: {e}"));
            return report;
        }
    }
    let cutoffs = DatasetCutoffs {
        unused_before: now - chrono(retention.unused_after),
        trained_before: retention.trained_images_after.map(|d| now - chrono(d)),
    };
    loop {
        match repo.sweep_datasets(cutoffs, BATCH, now).await {
            Ok(swept) => {
                let n = swept.deleted.len().max(swept.images_removed.len());
                report.datasets_deleted.extend(swept.deleted);
                report.images_removed.extend(swept.images_removed);
                if n < BATCH as usize {
                    break;
                }
            }
            Err(e) => {
                report.errors.push(format!("deleting datasets: {e}"));
                break;
            }
        }
    }
    let claimed_before = now - chrono(BLOB_CLAIM_GRACE);
    loop {
        let keys = match repo.orphan_blobs(claimed_before, BATCH, now).await {
            Ok(k) => k,
            Err(e) => {
                report
                    .errors
                    .push(format!("finding unreferenced blobs: {e}"));
                break;
            }
        };
        let mut deleted = Vec::with_capacity(keys.len());
        for key in &keys {
            match store.delete(key).await {
                Ok(()) => deleted.push(key.clone()),
                // Left marked: the next sweep tries again; intakes of these bytes wait till then.
                Err(e) => report.errors.push(format!("deleting {key}: {e}")),
            }
        }
        if let Err(e) = repo.forget_blobs(&deleted).await {
            report.errors.push(format!("forgetting deleted blobs: {e}"));
            break;
        }
        let done = keys.len() < BATCH as usize || deleted.len() < keys.len();
        report.blobs_deleted.extend(deleted);
        if done {
            break;
        }
    }
    report
}
