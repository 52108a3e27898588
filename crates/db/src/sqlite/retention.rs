//! The dataset sweep's rows (issue 9 item 5): unused datasets, images of finished LoRAs'
//! datasets, and image blobs nothing references. Blob bytes are the caller's to delete.

use sqlx::SqliteConnection;

use loraforge_domain::DatasetId;

use super::SqliteRepository;
use super::rows::ts;
use crate::common::{corrupt, final_statuses};
use crate::{DatasetCutoffs, Result, SweptDatasets};

pub(super) async fn claim_blobs(
    repo: &SqliteRepository,
    keys: &[String],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    let at = ts(now);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let done: Result<Option<()>> = in_write_tx!(repo, |conn| async {
        super::datasets::claim(conn, &keys, &at, false).await?;
        Ok(Some(()))
    });
    done.map(|_| ())
}

fn dataset_ids(ids: Vec<String>) -> Result<Vec<DatasetId>> {
    ids.iter()
        .map(|s| {
            s.parse()
                .map_err(|e| corrupt(format!("dataset id {s:?}: {e}")))
        })
        .collect()
}

async fn delete_images(conn: &mut SqliteConnection, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM dataset_images WHERE dataset_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn sweep_datasets(
    repo: &SqliteRepository,
    cutoffs: DatasetCutoffs,
    limit: u32,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<SweptDatasets> {
    let unused_before = ts(cutoffs.unused_before);
    let trained_before = cutoffs.trained_before.map(ts);
    let now = ts(now);
    let ended = serde_json::to_string(&final_statuses())
        .map_err(|e| corrupt(format!("status list: {e}")))?;
    // The write lock is held throughout, so no LoRA can start using a dataset being deleted.
    let done: Result<Option<SweptDatasets>> = in_write_tx!(repo, |conn| async {
        let unused: Vec<String> = sqlx::query_scalar(
            "SELECT d.id FROM datasets d WHERE d.created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM lora_models m WHERE m.dataset_id = d.id) \
             ORDER BY d.created_at LIMIT $2",
        )
        .bind(&unused_before)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        for id in &unused {
            delete_images(conn, id).await?;
            sqlx::query("DELETE FROM datasets WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        let mut trained: Vec<String> = Vec::new();
        if let Some(before) = &trained_before {
            trained = sqlx::query_scalar(
                "SELECT d.id FROM datasets d WHERE d.images_removed_at IS NULL \
                 AND EXISTS (SELECT 1 FROM lora_models m WHERE m.dataset_id = d.id) \
                 AND NOT EXISTS (SELECT 1 FROM lora_models m WHERE m.dataset_id = d.id \
                     AND (m.training_status NOT IN (SELECT value FROM json_each($3)) \
                          OR m.updated_at >= $1)) \
                 ORDER BY d.created_at LIMIT $2",
            )
            .bind(before)
            .bind(i64::from(limit))
            .bind(&ended)
            .fetch_all(&mut *conn)
            .await?;
            for id in &trained {
                delete_images(conn, id).await?;
                sqlx::query("UPDATE datasets SET images_removed_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(&now)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(Some(SweptDatasets {
            deleted: dataset_ids(unused)?,
            images_removed: dataset_ids(trained)?,
        }))
    });
    done.map(Option::unwrap_or_default)
}

pub(super) async fn orphan_blobs(
    repo: &SqliteRepository,
    claimed_before: chrono::DateTime<chrono::Utc>,
    limit: u32,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>> {
    let before = ts(claimed_before);
    let now = ts(now);
    let done: Result<Option<Vec<String>>> = in_write_tx!(repo, |conn| async {
        let keys: Vec<String> = sqlx::query_scalar(
            "UPDATE image_blobs SET deleting_since = coalesce(deleting_since, $3) WHERE key IN ( \
               SELECT b.key FROM image_blobs b \
               WHERE (b.deleting_since IS NOT NULL OR b.claimed_at < $1) \
               AND NOT EXISTS (SELECT 1 FROM dataset_images i WHERE i.storage_key = b.key) \
               ORDER BY b.claimed_at LIMIT $2) \
             RETURNING key",
        )
        .bind(&before)
        .bind(i64::from(limit))
        .bind(&now)
        .fetch_all(&mut *conn)
        .await?;
        Ok(Some(keys))
    });
    done.map(Option::unwrap_or_default)
}

pub(super) async fn forget_blobs(repo: &SqliteRepository, keys: &[String]) -> Result<()> {
    let done: Result<Option<()>> = in_write_tx!(repo, |conn| async {
        for key in keys {
            sqlx::query(
                "DELETE FROM image_blobs WHERE key = $1 AND deleting_since IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM dataset_images i WHERE i.storage_key = image_blobs.key)",
            )
            .bind(key)
            .execute(&mut *conn)
            .await?;
        }
        Ok(Some(()))
    });
    done.map(|_| ())
}
