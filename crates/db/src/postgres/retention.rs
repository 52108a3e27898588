//! The dataset sweep's rows (issue 9 item 5): unused datasets, images of finished LoRAs'
//! datasets, and image blobs nothing references. Blob bytes are the caller's to delete.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgRepository;
use super::rows::ts;
use crate::common::final_statuses;
use crate::{DatasetCutoffs, Result, SweptDatasets};

pub(super) async fn claim_blobs(
    repo: &PgRepository,
    keys: &[String],
    now: DateTime<Utc>,
) -> Result<()> {
    let mut keys = keys.to_vec();
    // One lock order for every claimer, so two claims of shared blobs cannot deadlock.
    keys.sort_unstable();
    keys.dedup();
    let done: Result<Option<()>> = in_write_tx!(repo, |conn| async {
        super::datasets::claim(conn, &keys, ts(now), false).await?;
        Ok(Some(()))
    });
    done.map(|_| ())
}

async fn delete_images(conn: &mut PgConnection, ids: &[Uuid]) -> Result<()> {
    sqlx::query("DELETE FROM dataset_images WHERE dataset_id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn sweep_datasets(
    repo: &PgRepository,
    cutoffs: DatasetCutoffs,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<SweptDatasets> {
    let ended = final_statuses();
    let done: Result<Option<SweptDatasets>> = in_write_tx!(repo, |conn| async {
        // Rows locked FOR UPDATE: a create that starts using one of these datasets meanwhile
        // (its foreign key takes a share lock on the row) either waits for this sweep, and then
        // finds no dataset, or makes the delete fail on the foreign key, which rolls back the sweep.
        let unused: Vec<Uuid> = sqlx::query_scalar(
            "SELECT d.id FROM datasets d WHERE d.created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM lora_models m WHERE m.dataset_id = d.id) \
             ORDER BY d.created_at LIMIT $2 FOR UPDATE OF d",
        )
        .bind(ts(cutoffs.unused_before))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        delete_images(conn, &unused).await?;
        sqlx::query("DELETE FROM datasets WHERE id = ANY($1)")
            .bind(&unused)
            .execute(&mut *conn)
            .await?;
        let mut trained: Vec<Uuid> = Vec::new();
        if let Some(before) = cutoffs.trained_before {
            trained = sqlx::query_scalar(
                "SELECT d.id FROM datasets d WHERE d.images_removed_at IS NULL \
                 AND EXISTS (SELECT 1 FROM lora_models m WHERE m.dataset_id = d.id) \
                 AND NOT EXISTS (SELECT 1 FROM lora_models m WHERE m.dataset_id = d.id \
                     AND (m.training_status <> ALL($3) OR m.updated_at >= $1)) \
                 ORDER BY d.created_at LIMIT $2 FOR UPDATE OF d",
            )
            .bind(ts(before))
            .bind(i64::from(limit))
            .bind(&ended)
            .fetch_all(&mut *conn)
            .await?;
            delete_images(conn, &trained).await?;
            sqlx::query("UPDATE datasets SET images_removed_at = $2 WHERE id = ANY($1)")
                .bind(&trained)
                .bind(ts(now))
                .execute(&mut *conn)
                .await?;
        }
        Ok(Some(SweptDatasets {
            deleted: unused.into_iter().map(Into::into).collect(),
            images_removed: trained.into_iter().map(Into::into).collect(),
        }))
    });
    done.map(Option::unwrap_or_default)
}

pub(super) async fn orphan_blobs(
    repo: &PgRepository,
    claimed_before: DateTime<Utc>,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    // A claim renewed meanwhile (an intake's insert holds the row) makes this UPDATE wait and
    // then re-check the row's `claimed_at`, so a blob just referenced is never marked.
    let done: Result<Option<Vec<String>>> = in_write_tx!(repo, |conn| async {
        let keys: Vec<String> = sqlx::query_scalar(
            "UPDATE image_blobs SET deleting_since = coalesce(deleting_since, $3) WHERE key IN ( \
               SELECT b.key FROM image_blobs b \
               WHERE (b.deleting_since IS NOT NULL OR b.claimed_at < $1) \
               AND NOT EXISTS (SELECT 1 FROM dataset_images i WHERE i.storage_key = b.key) \
               ORDER BY b.claimed_at LIMIT $2) \
             AND (deleting_since IS NOT NULL OR claimed_at < $1) \
             RETURNING key",
        )
        .bind(ts(claimed_before))
        .bind(i64::from(limit))
        .bind(ts(now))
        .fetch_all(&mut *conn)
        .await?;
        Ok(Some(keys))
    });
    done.map(Option::unwrap_or_default)
}

pub(super) async fn forget_blobs(repo: &PgRepository, keys: &[String]) -> Result<()> {
    let done: Result<Option<()>> = in_write_tx!(repo, |conn| async {
        sqlx::query(
            "DELETE FROM image_blobs b WHERE b.key = ANY($1) AND b.deleting_since IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM dataset_images i WHERE i.storage_key = b.key)",
        )
        .bind(keys)
        .execute(&mut *conn)
        .await?;
        Ok(Some(()))
    });
    done.map(|_| ())
}
