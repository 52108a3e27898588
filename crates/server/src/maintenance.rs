//! Periodic housekeeping of stored files. Each sweep is one steppable call with the time passed
//! in; `run` repeats them until shutdown.

use std::time::Duration;

use chrono::{DateTime, Utc};

use loraforge_storage::{BlobStore, StorageError};

use crate::state::AppState;

pub use loraforge_domain::keys::VALIDATION_IMAGES_PREFIX;

/// PRD 2: validation images are kept 30 days.
pub const VALIDATION_IMAGE_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Deletes validation images stored before `now - ttl`; returns how many.
pub async fn sweep_validation_images(
    store: &dyn BlobStore,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<usize, StorageError> {
    let cutoff = now - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let mut deleted = 0;
    for (key, meta) in store.list(VALIDATION_IMAGES_PREFIX).await? {
        if meta.last_modified < cutoff {
            store.delete(&key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Sweeps every `every` until `shutdown` resolves: validation images past their 30 days, this
/// month's storage costs (`storage_accrual`, idempotent), the dataset sweep (`dataset_sweep`, one
/// replica at a time) and the operator monitors (`monitors::run_monitors_leased`, one replica at a
/// time); and settles credit reservations every `credits::RECONCILE_EVERY`
/// (`credits::reconcile_credits`). Failures are logged; the next round retries.
pub async fn run(
    state: AppState,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let holder = format!("replica-{}", uuid::Uuid::new_v4());
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut credits = tokio::time::interval(crate::credits::RECONCILE_EVERY.min(every));
    credits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = credits.tick() => {
                // Settles reservations of finished LoRAs (credits on or not: one left by a
                // time credits were on is still settled).
                match crate::credits::reconcile_credits(state.repo(), state.now()).await {
                    Ok(r) if r.charged + r.refunded + r.reimbursed > 0 => tracing::info!(
                        charged = r.charged, refunded = r.refunded, reimbursed = r.reimbursed,
                        deducted_micros = r.deducted.0, "credit reservations settled"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "settling credit reservations failed; the next round retries"),
                }
            }
            _ = interval.tick() => {
                match sweep_validation_images(state.store(), state.now(), VALIDATION_IMAGE_TTL).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "validation images past their 30 days removed"),
                    Err(e) => tracing::warn!(error = %e, "sweeping old validation images failed"),
                }
                let now = state.now();
                let month = loraforge_domain::budget::month_key(now);
                match crate::storage_accrual::accrue_storage(
                    state.repo(),
                    state.settings().costs.storage_price_per_gb_month,
                    &month,
                    now,
                )
                .await
                {
                    Ok(a) if a.charged > 0 => tracing::info!(month = %month, loras = a.charged, amount = %a.amount, "storage costs recorded"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "recording storage costs failed"),
                }
                let r = crate::dataset_sweep::sweep_datasets(
                    state.repo(),
                    state.store(),
                    state.settings().dataset_retention,
                    &holder,
                    state.now(),
                )
                .await;
                for e in &r.errors {
                    tracing::warn!(error = %e, "the dataset sweep failed in part");
                }
                let m = crate::monitors::run_monitors_leased(
                    state.repo(),
                    &state.settings().monitors,
                    &holder,
                    every.max(Duration::from_secs(60)),
                    state.now(),
                )
                .await;
                for e in &m.errors {
                    tracing::warn!(error = %e, "a monitor failed");
                }
                if !(r.datasets_deleted.is_empty() && r.images_removed.is_empty() && r.blobs_deleted.is_empty()) {
                    tracing::info!(
                        datasets_deleted = r.datasets_deleted.len(),
                        images_removed = r.images_removed.len(),
                        blobs_deleted = r.blobs_deleted.len(),
                        "dataset sweep"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use secrecy::SecretSlice;

    use super::*;

    #[tokio::test]
    async fn validation_images_go_after_30_days_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = loraforge_storage::local::LocalStore::new(
            dir.path(),
            url::Url::parse("http://127.0.0.1:1").unwrap(),
            Arc::new(SecretSlice::from(vec![1u8; 32])),
        )
        .unwrap();
        let image = "lora-validation-images/u/l/validation/0.png";
        let model = "lora-models/u/l/model.safetensors";
        store.put(image, Bytes::from_static(b"png")).await.unwrap();
        store.put(model, Bytes::from_static(b"lora")).await.unwrap();
        let now = Utc::now();
        assert_eq!(
            sweep_validation_images(&store, now, VALIDATION_IMAGE_TTL)
                .await
                .unwrap(),
            0
        );
        let in_29_days = now + chrono::Duration::days(29);
        assert_eq!(
            sweep_validation_images(&store, in_29_days, VALIDATION_IMAGE_TTL)
                .await
                .unwrap(),
            0
        );
        let in_31_days = now + chrono::Duration::days(31);
        assert_eq!(
            sweep_validation_images(&store, in_31_days, VALIDATION_IMAGE_TTL)
                .await
                .unwrap(),
            1
        );
        assert!(store.head(image).await.unwrap().is_none());
        assert!(
            store.head(model).await.unwrap().is_some(),
            "only validation images expire"
        );
    }
}
