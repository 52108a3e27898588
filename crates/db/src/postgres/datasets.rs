//! Datasets, and the bulk import path of the library.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use loraforge_domain::{
    DailyWindow, Dataset, DatasetId, DatasetImage, DatasetQuota, DatasetUsage, ImageFormat,
    TrainingStatus, UserId,
};

use super::PgRepository;
use super::library::lock_user;
use super::rows::ts;
use crate::common::{corrupt, to_i64, to_u32, to_u64};
use crate::{DbError, LibraryRow, Result};

/// Rows per `INSERT … SELECT FROM UNNEST(…)`.
const BULK_CHUNK: usize = 10_000;

/// Inserts `dataset`; with a quota, only if it fits the owner's day (checked while the owner's
/// lock row is held, so concurrent inserts of one user cannot both squeeze in).
pub(super) async fn insert_dataset(
    repo: &PgRepository,
    dataset: &Dataset,
    quota: Option<DatasetQuota>,
) -> Result<()> {
    let id = dataset.id.as_uuid();
    let total = to_i64(dataset.total_bytes(), "bytes")?;
    let mut keys: Vec<String> = dataset
        .images
        .iter()
        .map(|i| i.storage_key.clone())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let user = dataset.user_id.as_uuid();
    let at = ts(dataset.created_at);
    let mut idx = Vec::new();
    let mut file_name = Vec::new();
    let mut format = Vec::new();
    let mut width = Vec::new();
    let mut height = Vec::new();
    let mut bytes = Vec::new();
    let mut hash = Vec::new();
    let mut key = Vec::new();
    let mut caption = Vec::new();
    for img in &dataset.images {
        idx.push(i32::try_from(img.index).map_err(|_| corrupt("image index out of range"))?);
        file_name.push(img.file_name.clone());
        format.push(img.format.as_str().to_owned());
        width.push(i32::try_from(img.width).map_err(|_| corrupt("image width out of range"))?);
        height.push(i32::try_from(img.height).map_err(|_| corrupt("image height out of range"))?);
        bytes.push(to_i64(img.bytes, "bytes")?);
        hash.push(img.content_hash.clone());
        key.push(img.storage_key.clone());
        caption.push(img.caption.clone());
    }
    let done: Result<Option<()>> = in_write_tx!(repo, |conn| async {
        if let Some(quota) = quota {
            lock_user(conn, user, at).await?;
            let usage = usage(conn, user, DailyWindow::containing(dataset.created_at)).await?;
            quota
                .admits(usage, dataset.total_bytes())
                .map_err(DbError::DatasetQuotaReached)?;
        }
        // Renewing the claims keeps the sweep off these blobs (it marks only blobs unclaimed for
        // its grace period; the row locks taken here make a concurrent mark wait and then see
        // the renewed claim); a blob it is deleting now refuses the insert.
        claim(conn, &keys, at, quota.is_some()).await?;
        sqlx::query("INSERT INTO users (id, created_at, updated_at) VALUES ($1, $2, $2) ON CONFLICT (id) DO NOTHING")
            .bind(user)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO datasets (id, user_id, created_at, bytes) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(user)
        .bind(at)
        .bind(total)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO dataset_images (dataset_id, idx, file_name, format, width, height, bytes, content_hash, \
             storage_key, caption) \
             SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::int[], $6::int[], $7::bigint[], \
             $8::text[], $9::text[], $10::text[])",
        )
        .bind(id)
        .bind(&idx)
        .bind(&file_name)
        .bind(&format)
        .bind(&width)
        .bind(&height)
        .bind(&bytes)
        .bind(&hash)
        .bind(&key)
        .bind(&caption)
        .execute(&mut *conn)
        .await?;
        Ok(Some(()))
    });
    done.map(|_| ())
}

/// Claims image blobs at `at`. `strict`: each must have been claimed before (by the intake that
/// wrote its bytes), so a blob the sweep deleted and forgot meanwhile is never referenced.
/// `BlobBusy` when one is being deleted (or, strict, unknown).
pub(super) async fn claim(
    conn: &mut sqlx::PgConnection,
    keys: &[String],
    at: DateTime<Utc>,
    strict: bool,
) -> Result<()> {
    let sql = if strict {
        "UPDATE image_blobs SET claimed_at = $2 WHERE key = $1 AND deleting_since IS NULL"
    } else {
        "INSERT INTO image_blobs (key, claimed_at) VALUES ($1, $2) ON CONFLICT (key) \
         DO UPDATE SET claimed_at = EXCLUDED.claimed_at WHERE image_blobs.deleting_since IS NULL"
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
    conn: &mut sqlx::PgConnection,
    user: Uuid,
    window: DailyWindow,
) -> Result<DatasetUsage> {
    let (count, bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(bytes), 0)::bigint FROM datasets \
         WHERE user_id = $1 AND created_at >= $2 AND created_at < $3",
    )
    .bind(user)
    .bind(window.start)
    .bind(window.end)
    .fetch_one(&mut *conn)
    .await?;
    Ok(DatasetUsage {
        datasets: to_u32(count, "count")?,
        bytes: to_u64(bytes, "bytes")?,
    })
}

pub(super) async fn dataset_usage(
    pool: &PgPool,
    user: UserId,
    window: DailyWindow,
) -> Result<DatasetUsage> {
    let mut conn = pool.acquire().await?;
    usage(&mut conn, user.as_uuid(), window).await
}

pub(super) async fn get_dataset(pool: &PgPool, id: DatasetId) -> Result<Option<Dataset>> {
    let mut conn = pool.acquire().await?;
    let Some(row) = sqlx::query("SELECT user_id, created_at FROM datasets WHERE id = $1")
        .bind(id.as_uuid())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let user: Uuid = row.try_get("user_id")?;
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    let rows = sqlx::query(
        "SELECT idx, file_name, format, width, height, bytes, content_hash, storage_key, caption \
         FROM dataset_images WHERE dataset_id = $1 ORDER BY idx",
    )
    .bind(id.as_uuid())
    .fetch_all(&mut *conn)
    .await?;
    let images = rows
        .iter()
        .map(|r| {
            let format: String = r.try_get("format")?;
            Ok(DatasetImage {
                index: to_u32(i64::from(r.try_get::<i32, _>("idx")?), "idx")?,
                file_name: r.try_get("file_name")?,
                format: ImageFormat::parse(&format)
                    .ok_or_else(|| corrupt(format!("image format {format:?}")))?,
                width: to_u32(i64::from(r.try_get::<i32, _>("width")?), "width")?,
                height: to_u32(i64::from(r.try_get::<i32, _>("height")?), "height")?,
                bytes: to_u64(r.try_get("bytes")?, "bytes")?,
                content_hash: r.try_get("content_hash")?,
                storage_key: r.try_get("storage_key")?,
                caption: r.try_get("caption")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Dataset {
        id,
        user_id: user.into(),
        images,
        created_at,
    }))
}

/// A bulk import as column arrays, for `UNNEST`.
#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    user: Vec<Uuid>,
    name: Vec<String>,
    name_key: Vec<String>,
    description: Vec<Option<String>>,
    dataset: Vec<Uuid>,
    params: Vec<String>,
    status: Vec<String>,
    usage_count: Vec<i64>,
    created_at: Vec<DateTime<Utc>>,
}

pub(super) async fn bulk_insert_library(repo: &PgRepository, rows: Vec<LibraryRow>) -> Result<u64> {
    // The newest email seen per owner, and each owner's earliest row as their first appearance.
    let mut users: HashMap<Uuid, (Option<String>, DateTime<Utc>)> = HashMap::new();
    let mut chunks: Vec<Columns> = Vec::new();
    let count = rows.len() as u64;
    for (i, r) in rows.into_iter().enumerate() {
        let created_at = ts(r.created_at);
        let user = users.entry(r.owner.as_uuid()).or_insert((None, created_at));
        if r.owner_email.is_some() {
            user.0 = r.owner_email.clone();
        }
        user.1 = user.1.min(created_at);
        if i % BULK_CHUNK == 0 {
            chunks.push(Columns::default());
        }
        let Some(c) = chunks.last_mut() else { continue };
        c.id.push(r.id.as_uuid());
        c.user.push(r.owner.as_uuid());
        c.name_key.push(r.name.key());
        c.name.push(r.name.into_inner());
        c.description.push(r.description);
        c.dataset.push(r.dataset_id.as_uuid());
        c.params
            .push(serde_json::to_string(&r.params).map_err(|e| corrupt(format!("params: {e}")))?);
        c.status.push(r.status.as_str().to_owned());
        c.usage_count.push(to_i64(r.usage_count, "usage_count")?);
        c.created_at.push(created_at);
    }
    let mut user_ids = Vec::new();
    let mut emails = Vec::new();
    let mut firsts = Vec::new();
    for (id, (email, first)) in users {
        user_ids.push(id);
        emails.push(email);
        firsts.push(first);
    }
    let completed = TrainingStatus::Completed.as_str();
    let done: Result<Option<u64>> = in_write_tx!(repo, |conn| async {
        sqlx::query(
            "INSERT INTO users (id, email, created_at, updated_at) \
             SELECT id, email, at, at FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS t(id, email, at) \
             ON CONFLICT (id) DO UPDATE SET email = coalesce(EXCLUDED.email, users.email)",
        )
        .bind(&user_ids)
        .bind(&emails)
        .bind(&firsts)
        .execute(&mut *conn)
        .await?;
        for c in &chunks {
            sqlx::query(
                "INSERT INTO lora_models (id, user_id, name, description, dataset_id, params, training_status, \
                 progress, usage_count, created_at, updated_at, completed_at, name_key) \
                 SELECT id, user_id, name, description, dataset_id, params::jsonb, status, \
                 CASE WHEN status = $10 THEN 100 ELSE 0 END, usage_count, created_at, created_at, \
                 CASE WHEN status = $10 THEN created_at END, name_key \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::text[], \
                 $8::bigint[], $9::timestamptz[], $11::text[]) \
                 AS t(id, user_id, name, description, dataset_id, params, status, usage_count, created_at, name_key)",
            )
            .bind(&c.id)
            .bind(&c.user)
            .bind(&c.name)
            .bind(&c.description)
            .bind(&c.dataset)
            .bind(&c.params)
            .bind(&c.status)
            .bind(&c.usage_count)
            .bind(&c.created_at)
            .bind(completed)
            .bind(&c.name_key)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO training_jobs (lora_id, created_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[])",
            )
            .bind(&c.id)
            .bind(&c.created_at)
            .execute(&mut *conn)
            .await?;
        }
        Ok(Some(count))
    });
    done.map(|n| n.unwrap_or(0))
}
