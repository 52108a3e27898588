//! Datasets, and the bulk import path of the library.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use loraforge_domain::{
    DailyWindow, Dataset, DatasetId, DatasetImage, DatasetQuota, DatasetUsage, ImageFormat,
    TrainingStatus, UserId,
};

use super::SqliteRepository;
use super::rows::{parse_ts, ts};
use crate::common::{corrupt, to_i64, to_u32, to_u64};
use crate::{DbError, LibraryRow, Result};

/// Rows per multi-row `INSERT` (at most 12 bound values each, under SQLite's 32,766).
const BULK_CHUNK: usize = 2_000;

/// Inserts `dataset`; with a quota, only if it fits the owner's day (checked under the write
/// lock every write transaction holds, so concurrent inserts cannot both squeeze in).
pub(super) async fn insert_dataset(
    repo: &SqliteRepository,
    dataset: &Dataset,
    quota: Option<DatasetQuota>,
) -> Result<()> {
    let id = dataset.id.to_string();
    let user = dataset.user_id.to_string();
    let at = ts(dataset.created_at);
    let total = to_i64(dataset.total_bytes(), "bytes")?;
    let done: Result<Option<()>> = in_write_tx!(repo, |conn| async {
        if let Some(quota) = quota {
            let usage = usage(conn, &user, DailyWindow::containing(dataset.created_at)).await?;
            quota
                .admits(usage, dataset.total_bytes())
                .map_err(DbError::DatasetQuotaReached)?;
        }
        // Renewing the claims keeps the sweep off these blobs (it marks only blobs unclaimed for
        // its grace period); a blob it is deleting now refuses the insert.
        claim(conn, &image_keys(dataset), &at, quota.is_some()).await?;
        sqlx::query("INSERT INTO users (id, created_at, updated_at) VALUES ($1, $2, $2) ON CONFLICT (id) DO NOTHING")
            .bind(&user)
            .bind(&at)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO datasets (id, user_id, created_at, bytes) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(&user)
        .bind(&at)
        .bind(total)
        .execute(&mut *conn)
        .await?;
        for img in &dataset.images {
            sqlx::query(
                "INSERT INTO dataset_images (dataset_id, idx, file_name, format, width, height, bytes, \
                 content_hash, storage_key, caption) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&id)
            .bind(i64::from(img.index))
            .bind(&img.file_name)
            .bind(img.format.as_str())
            .bind(i64::from(img.width))
            .bind(i64::from(img.height))
            .bind(to_i64(img.bytes, "bytes")?)
            .bind(&img.content_hash)
            .bind(&img.storage_key)
            .bind(&img.caption)
            .execute(&mut *conn)
            .await?;
        }
        Ok(Some(()))
    });
    done.map(|_| ())
}

fn image_keys(dataset: &Dataset) -> Vec<&str> {
    let mut keys: Vec<&str> = dataset
        .images
        .iter()
        .map(|i| i.storage_key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Claims image blobs at `at`. `strict`: each must have been claimed before (by the intake that
/// wrote its bytes), so a blob the sweep deleted and forgot meanwhile is never referenced.
/// `BlobBusy` when one is being deleted (or, strict, unknown).
pub(super) async fn claim(
    conn: &mut sqlx::SqliteConnection,
    keys: &[&str],
    at: &str,
    strict: bool,
) -> Result<()> {
    let sql = if strict {
        "UPDATE image_blobs SET claimed_at = $2 WHERE key = $1 AND deleting_since IS NULL"
    } else {
        "INSERT INTO image_blobs (key, claimed_at) VALUES ($1, $2) ON CONFLICT (key) \
         DO UPDATE SET claimed_at = excluded.claimed_at WHERE image_blobs.deleting_since IS NULL"
    };
    for key in keys {
        let n = sqlx::query(sql)
            .bind(key)
            .bind(at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if n != 1 {
            return Err(DbError::BlobBusy);
        }
    }
    Ok(())
}

async fn usage(
    conn: &mut sqlx::SqliteConnection,
    user: &str,
    window: DailyWindow,
) -> Result<DatasetUsage> {
    let (count, bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(bytes), 0) FROM datasets \
         WHERE user_id = $1 AND created_at >= $2 AND created_at < $3",
    )
    .bind(user)
    .bind(ts(window.start))
    .bind(ts(window.end))
    .fetch_one(&mut *conn)
    .await?;
    Ok(DatasetUsage {
        datasets: to_u32(count, "count")?,
        bytes: to_u64(bytes, "bytes")?,
    })
}

pub(super) async fn dataset_usage(
    pool: &SqlitePool,
    user: UserId,
    window: DailyWindow,
) -> Result<DatasetUsage> {
    let mut conn = pool.acquire().await?;
    usage(&mut conn, &user.to_string(), window).await
}

pub(super) async fn get_dataset(pool: &SqlitePool, id: DatasetId) -> Result<Option<Dataset>> {
    let id_s = id.to_string();
    let mut conn = pool.acquire().await?;
    let Some(row) = sqlx::query("SELECT user_id, created_at FROM datasets WHERE id = $1")
        .bind(&id_s)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let user: String = row.try_get("user_id")?;
    let created_at = parse_ts(&row.try_get::<String, _>("created_at")?)?;
    let rows = sqlx::query(
        "SELECT idx, file_name, format, width, height, bytes, content_hash, storage_key, caption \
         FROM dataset_images WHERE dataset_id = $1 ORDER BY idx",
    )
    .bind(&id_s)
    .fetch_all(&mut *conn)
    .await?;
    let images = rows
        .iter()
        .map(|r| {
            let format: String = r.try_get("format")?;
            Ok(DatasetImage {
                index: to_u32(r.try_get("idx")?, "idx")?,
                file_name: r.try_get("file_name")?,
                format: ImageFormat::parse(&format)
                    .ok_or_else(|| corrupt(format!("image format {format:?}")))?,
                width: to_u32(r.try_get("width")?, "width")?,
                height: to_u32(r.try_get("height")?, "height")?,
                bytes: to_u64(r.try_get("bytes")?, "bytes")?,
                content_hash: r.try_get("content_hash")?,
                storage_key: r.try_get("storage_key")?,
                caption: r.try_get("caption")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Dataset {
        id,
        user_id: user
            .parse()
            .map_err(|e| corrupt(format!("dataset owner {user:?}: {e}")))?,
        images,
        created_at,
    }))
}

/// One encoded row of a bulk import.
struct BulkRow {
    id: String,
    user: String,
    name: String,
    name_key: String,
    description: Option<String>,
    dataset: String,
    params: String,
    status: &'static str,
    progress: i64,
    usage_count: i64,
    created_at: String,
    completed_at: Option<String>,
}

pub(super) async fn bulk_insert_library(
    repo: &SqliteRepository,
    rows: Vec<LibraryRow>,
) -> Result<u64> {
    // The newest email seen per owner, and each owner's earliest row as their first appearance.
    let mut users: HashMap<String, (Option<String>, String)> = HashMap::new();
    let mut encoded = Vec::with_capacity(rows.len());
    for r in rows {
        let created_at = ts(r.created_at);
        let user = users
            .entry(r.owner.to_string())
            .or_insert((None, created_at.clone()));
        if r.owner_email.is_some() {
            user.0 = r.owner_email.clone();
        }
        if created_at < user.1 {
            user.1 = created_at.clone();
        }
        let completed = r.status == TrainingStatus::Completed;
        encoded.push(BulkRow {
            id: r.id.to_string(),
            user: r.owner.to_string(),
            name_key: r.name.key(),
            name: r.name.into_inner(),
            description: r.description,
            dataset: r.dataset_id.to_string(),
            params: serde_json::to_string(&r.params)
                .map_err(|e| corrupt(format!("params: {e}")))?,
            status: r.status.as_str(),
            progress: if completed { 100 } else { 0 },
            usage_count: to_i64(r.usage_count, "usage_count")?,
            completed_at: completed.then(|| created_at.clone()),
            created_at,
        });
    }
    let users: Vec<_> = users.into_iter().collect();
    let count = encoded.len() as u64;
    let done: Result<Option<u64>> = in_write_tx!(repo, |conn| async {
        for chunk in users.chunks(BULK_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO users (id, email, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, (id, (email, at))| {
                b.push_bind(id).push_bind(email).push_bind(at).push_bind(at);
            });
            qb.push(
                " ON CONFLICT (id) DO UPDATE SET email = coalesce(excluded.email, users.email)",
            );
            qb.build().execute(&mut *conn).await?;
        }
        for chunk in encoded.chunks(BULK_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO lora_models (id, user_id, name, description, dataset_id, params, training_status, \
                 progress, usage_count, created_at, updated_at, completed_at, name_key) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(&r.id)
                    .push_bind(&r.user)
                    .push_bind(&r.name)
                    .push_bind(&r.description)
                    .push_bind(&r.dataset)
                    .push_bind(&r.params)
                    .push_bind(r.status)
                    .push_bind(r.progress)
                    .push_bind(r.usage_count)
                    .push_bind(&r.created_at)
                    .push_bind(&r.created_at)
                    .push_bind(&r.completed_at)
                    .push_bind(&r.name_key);
            });
            qb.build().execute(&mut *conn).await?;
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO training_jobs (lora_id, created_at) ");
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(&r.id).push_bind(&r.created_at);
            });
            qb.build().execute(&mut *conn).await?;
        }
        Ok(Some(count))
    });
    done.map(|n| n.unwrap_or(0))
}
