//! [`SampleStore`] on SQLite: inserts run under the write lock (`BEGIN IMMEDIATE`), so the open
//! count and the insert cannot interleave with another request of the same user.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use loraforge_domain::samples::{SampleEvent, SampleStatus};
use loraforge_domain::{LoraId, SampleBatchId, UserId};

use super::SqliteRepository;
use super::rows::{parse_ts, ts};
use crate::Result;
use crate::samples::{
    BatchInsert, NewSampleBatch, SampleBatch, SampleBatchPage, SampleImage, SampleInstance,
    SampleStore, after_failure, check, instance_of, parse_id, status, u32_of,
};

const BATCH_COLUMNS: &str = "id, lora_id, user_id, status, steps, attempts, next_attempt_at, last_error, \
     backend, engine, provider_id, instance_name, instance_gone_at, heard_at, created_at, updated_at, finished_at";

type ImageRow = (i64, String, Option<String>, i64, f64, i64, i64, String);

fn opt_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>> {
    s.as_deref().map(parse_ts).transpose()
}

impl SqliteRepository {
    async fn images_of(&self, id: &str) -> Result<Vec<SampleImage>> {
        let rows: Vec<ImageRow> = sqlx::query_as(
            "SELECT idx, prompt, negative_prompt, seed, scale, width, height, storage_key \
             FROM lora_samples WHERE batch_id = $1 ORDER BY idx",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(idx, prompt, negative_prompt, seed, scale, w, h, storage_key)| {
                    Ok(SampleImage {
                        index: u32_of(idx, "sample index")?,
                        prompt,
                        negative_prompt,
                        seed: u64::try_from(seed)
                            .map_err(|_| crate::DbError::Corrupt(format!("seed {seed}")))?,
                        scale,
                        width: u32_of(w, "width")?,
                        height: u32_of(h, "height")?,
                        storage_key,
                    })
                },
            )
            .collect()
    }

    async fn batches(&self, rows: Vec<SqliteRow>) -> Result<Vec<SampleBatch>> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get("id")?;
            let images = self.images_of(&id).await?;
            out.push(SampleBatch {
                id: parse_id(&id, "sample batch")?,
                lora_id: parse_id(r.try_get("lora_id")?, "LoRA")?,
                user_id: parse_id(r.try_get("user_id")?, "user")?,
                status: status(r.try_get("status")?)?,
                steps: u32_of(r.try_get("steps")?, "steps")?,
                attempts: u32_of(r.try_get("attempts")?, "attempts")?,
                next_attempt_at: parse_ts(r.try_get("next_attempt_at")?)?,
                last_error: r.try_get("last_error")?,
                instance: instance_of(
                    r.try_get("backend")?,
                    r.try_get("engine")?,
                    r.try_get("provider_id")?,
                    r.try_get("instance_name")?,
                ),
                instance_gone_at: opt_ts(r.try_get("instance_gone_at")?)?,
                heard_at: opt_ts(r.try_get("heard_at")?)?,
                created_at: parse_ts(r.try_get("created_at")?)?,
                updated_at: parse_ts(r.try_get("updated_at")?)?,
                finished_at: opt_ts(r.try_get("finished_at")?)?,
                images,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl SampleStore for SqliteRepository {
    async fn insert_sample_batch(
        &self,
        batch: &NewSampleBatch,
        max_open: u32,
        now: DateTime<Utc>,
    ) -> Result<BatchInsert> {
        let mut tx = self.write_tx().await?;
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM lora_sample_batches WHERE user_id = $1 AND status IN ('queued', 'rendering')",
        )
        .bind(batch.user_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        if open >= i64::from(max_open) {
            return Ok(BatchInsert::TooManyOpen {
                open: u32_of(open, "open batches")?,
            });
        }
        sqlx::query(
            "INSERT INTO lora_sample_batches (id, lora_id, user_id, status, steps, attempts, next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, 'queued', $4, 0, $5, $5, $5)",
        )
        .bind(batch.id.to_string())
        .bind(batch.lora_id.to_string())
        .bind(batch.user_id.to_string())
        .bind(i64::from(batch.spec.steps))
        .bind(ts(now))
        .execute(&mut *tx)
        .await?;
        for im in batch.images() {
            sqlx::query(
                "INSERT INTO lora_samples (batch_id, idx, prompt, negative_prompt, seed, scale, width, height, storage_key, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(batch.id.to_string())
            .bind(i64::from(im.index))
            .bind(&im.prompt)
            .bind(&im.negative_prompt)
            .bind(i64::try_from(im.seed).unwrap_or(i64::MAX))
            .bind(im.scale)
            .bind(i64::from(im.width))
            .bind(i64::from(im.height))
            .bind(&im.storage_key)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let inserted = self
            .sample_batch(batch.id)
            .await?
            .ok_or(crate::DbError::NotFound)?;
        Ok(BatchInsert::Inserted(Box::new(inserted)))
    }

    async fn sample_batch(&self, id: SampleBatchId) -> Result<Option<SampleBatch>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BATCH_COLUMNS} FROM lora_sample_batches WHERE id = $1"
        )))
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(self.batches(rows).await?.pop())
    }

    async fn sample_batches_of(
        &self,
        lora: LoraId,
        requester: Option<UserId>,
        limit: u32,
        offset: u64,
    ) -> Result<SampleBatchPage> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BATCH_COLUMNS} FROM lora_sample_batches WHERE lora_id = $1 \
             AND ($2 IS NULL OR user_id = $2) ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        )))
        .bind(lora.to_string())
        .bind(requester.map(|u| u.to_string()))
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM lora_sample_batches WHERE lora_id = $1 AND ($2 IS NULL OR user_id = $2)",
        )
        .bind(lora.to_string())
        .bind(requester.map(|u| u.to_string()))
        .fetch_one(&self.pool)
        .await?;
        Ok(SampleBatchPage {
            batches: self.batches(rows).await?,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn due_sample_batches(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<SampleBatch>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BATCH_COLUMNS} FROM lora_sample_batches WHERE status = 'queued' \
             AND next_attempt_at <= $1 AND (backend IS NULL OR instance_gone_at IS NOT NULL) \
             ORDER BY next_attempt_at, id LIMIT $2"
        )))
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        self.batches(rows).await
    }

    async fn claim_sample_batch(
        &self,
        id: SampleBatchId,
        attempts_seen: u32,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let to = check(SampleStatus::Queued, SampleEvent::Launched)?;
        let done = sqlx::query(
            "UPDATE lora_sample_batches SET status = $1, attempts = attempts + 1, backend = NULL, engine = NULL, \
             provider_id = NULL, instance_name = NULL, instance_gone_at = NULL, heard_at = NULL, updated_at = $2 \
             WHERE id = $3 AND status = 'queued' AND attempts = $4 AND next_attempt_at <= $2 \
             AND (backend IS NULL OR instance_gone_at IS NOT NULL)",
        )
        .bind(to.as_str())
        .bind(ts(now))
        .bind(id.to_string())
        .bind(i64::from(attempts_seen))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_sample_instance(
        &self,
        id: SampleBatchId,
        attempt: u32,
        instance: &SampleInstance,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE lora_sample_batches SET backend = $1, provider_id = $2, instance_name = $3, \
             instance_gone_at = NULL, updated_at = $4, engine = $7 \
             WHERE id = $5 AND status = 'rendering' AND attempts = $6 AND backend IS NULL",
        )
        .bind(&instance.backend)
        .bind(&instance.provider_id)
        .bind(&instance.instance_name)
        .bind(ts(now))
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .bind(&instance.engine)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn unclaim_sample_batch(
        &self,
        id: SampleBatchId,
        attempt: u32,
        retry_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE lora_sample_batches SET status = 'queued', attempts = attempts - 1, next_attempt_at = $1, \
             updated_at = $2 WHERE id = $3 AND status = 'rendering' AND attempts = $4 AND backend IS NULL",
        )
        .bind(ts(retry_at))
        .bind(ts(now))
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn complete_sample_batch(
        &self,
        id: SampleBatchId,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let to = check(SampleStatus::Rendering, SampleEvent::Rendered)?;
        let done = sqlx::query(
            "UPDATE lora_sample_batches SET status = $1, last_error = NULL, updated_at = $2, finished_at = $2 \
             WHERE id = $3 AND status = 'rendering' AND attempts = $4",
        )
        .bind(to.as_str())
        .bind(ts(now))
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn fail_sample_attempt(
        &self,
        id: SampleBatchId,
        attempt: u32,
        reason: &str,
        retryable: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<SampleStatus>> {
        let (to, next, finished) = after_failure(attempt, retryable, now);
        let done = sqlx::query(
            "UPDATE lora_sample_batches SET status = $1, next_attempt_at = $2, finished_at = $3, \
             last_error = $4, updated_at = $5 WHERE id = $6 AND status = 'rendering' AND attempts = $7",
        )
        .bind(to.as_str())
        .bind(ts(next))
        .bind(finished.map(ts))
        .bind(reason)
        .bind(ts(now))
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() == 1).then_some(to))
    }

    async fn watched_sample_batches(&self) -> Result<Vec<SampleBatch>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BATCH_COLUMNS} FROM lora_sample_batches \
             WHERE (backend IS NOT NULL AND instance_gone_at IS NULL) OR status = 'rendering' ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        self.batches(rows).await
    }

    async fn record_sample_heartbeat(
        &self,
        id: SampleBatchId,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE lora_sample_batches SET heard_at = $1 \
             WHERE id = $2 AND status = 'rendering' AND attempts = $3",
        )
        .bind(ts(now))
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_sample_instance_gone(
        &self,
        id: SampleBatchId,
        provider_id: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE lora_sample_batches SET instance_gone_at = $1, updated_at = $1 \
             WHERE id = $2 AND provider_id = $3 AND instance_gone_at IS NULL",
        )
        .bind(ts(now))
        .bind(id.to_string())
        .bind(provider_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
