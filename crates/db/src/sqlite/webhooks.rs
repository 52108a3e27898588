//! Client webhooks on SQLite (`0011_client_webhooks.sql`): every write runs under the write lock,
//! which serialises replicas' claims and batches.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use loraforge_domain::webhooks::{WebhookEvent, filter_from_text, filter_to_text};
use loraforge_domain::{LoraId, UserId};

use super::SqliteRepository;
use super::rows::{event, parse_ts, ts};
use crate::common::{corrupt, to_u32, to_u64};
use crate::webhooks::{
    AttemptNext, DueDelivery, LoraWebhook, NewWebhook, PendingWebhookEvent, WebhookAttempt,
    WebhookBatch, WebhookDelivery, WebhookStore,
};
use crate::{LoraEvent, Result};

/// Writes a new LoRA's webhook inside the create's transaction.
pub(super) async fn insert_webhook(
    conn: &mut SqliteConnection,
    lora_id: &str,
    hook: &NewWebhook,
    now: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO lora_webhooks (lora_id, url, events, event_cursor, created_at) VALUES ($1, $2, $3, 0, $4)",
    )
    .bind(lora_id)
    .bind(&hook.url)
    .bind(filter_to_text(&hook.events))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn uuid_col(row: &SqliteRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| corrupt(format!("{col} {s:?}: {e}")))
}

fn opt_ts(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    row.try_get::<Option<String>, _>(col)?
        .as_deref()
        .map(parse_ts)
        .transpose()
}

fn event_col(row: &SqliteRow, col: &str) -> Result<WebhookEvent> {
    let s: String = row.try_get(col)?;
    WebhookEvent::parse(&s).ok_or_else(|| corrupt(format!("webhook event {s:?}")))
}

fn webhook_row(row: &SqliteRow) -> Result<LoraWebhook> {
    let events: String = row.try_get("events")?;
    Ok(LoraWebhook {
        lora_id: uuid_col(row, "w_lora_id")?.into(),
        owner: uuid_col(row, "owner")?.into(),
        url: row.try_get("url")?,
        events: filter_from_text(&events)
            .ok_or_else(|| corrupt(format!("webhook events {events:?}")))?,
        event_cursor: row.try_get("event_cursor")?,
        last_progress_at: opt_ts(row, "last_progress_at")?,
    })
}

macro_rules! webhook_columns {
    () => {
        "w.lora_id AS w_lora_id, m.user_id AS owner, w.url, w.events, w.event_cursor, w.last_progress_at"
    };
}

async fn upsert_secret(
    repo: &SqliteRepository,
    user: UserId,
    fresh: &str,
    now: DateTime<Utc>,
    replace: bool,
) -> Result<String> {
    let sql = if replace {
        "INSERT INTO webhook_secrets (user_id, secret, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at"
    } else {
        "INSERT INTO webhook_secrets (user_id, secret, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO NOTHING"
    };
    let secret: Option<String> = in_write_tx!(repo, |conn| async {
        sqlx::query(sql)
            .bind(user.to_string())
            .bind(fresh)
            .bind(ts(now))
            .execute(&mut *conn)
            .await?;
        let s: String = sqlx::query_scalar("SELECT secret FROM webhook_secrets WHERE user_id = $1")
            .bind(user.to_string())
            .fetch_one(&mut *conn)
            .await?;
        Ok(Some(s))
    })?;
    secret.ok_or_else(|| corrupt("no webhook secret written"))
}

#[async_trait]
impl WebhookStore for SqliteRepository {
    async fn webhook_secret(
        &self,
        user: UserId,
        fresh: &str,
        now: DateTime<Utc>,
    ) -> Result<String> {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT secret FROM webhook_secrets WHERE user_id = $1")
                .bind(user.to_string())
                .fetch_optional(&self.pool)
                .await?;
        match existing {
            Some(s) => Ok(s),
            None => upsert_secret(self, user, fresh, now, false).await,
        }
    }

    async fn rotate_webhook_secret(
        &self,
        user: UserId,
        fresh: &str,
        now: DateTime<Utc>,
    ) -> Result<String> {
        upsert_secret(self, user, fresh, now, true).await
    }

    async fn lora_webhook(&self, lora: LoraId) -> Result<Option<LoraWebhook>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM lora_webhooks w JOIN lora_models m ON m.id = w.lora_id WHERE w.lora_id = $1"
        ))
        .bind(lora.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(webhook_row).transpose()
    }

    async fn pending_webhook_events(&self, limit: u32) -> Result<Vec<PendingWebhookEvent>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            webhook_columns!(),
            ", e.id, e.lora_id, e.kind, e.status, e.data, e.at \
             FROM lora_webhooks w JOIN lora_models m ON m.id = w.lora_id \
             JOIN lora_events e ON e.lora_id = w.lora_id AND e.id > w.event_cursor \
             ORDER BY e.id LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let event: LoraEvent = event(r)?;
                Ok(PendingWebhookEvent {
                    webhook: webhook_row(r)?,
                    event,
                })
            })
            .collect()
    }

    async fn record_webhook_batch(&self, batch: &WebhookBatch) -> Result<bool> {
        let lora = batch.lora_id.to_string();
        let now = ts(batch.now);
        let done: Option<()> = in_write_tx!(self, |conn| async {
            let moved = sqlx::query(
                "UPDATE lora_webhooks SET event_cursor = $1, \
                 last_progress_at = coalesce($2, last_progress_at) \
                 WHERE lora_id = $3 AND event_cursor = $4",
            )
            .bind(batch.to_cursor)
            .bind(batch.last_progress_at.map(ts))
            .bind(&lora)
            .bind(batch.from_cursor)
            .execute(&mut *conn)
            .await?;
            if moved.rows_affected() == 0 {
                return Ok(None);
            }
            for d in &batch.deliveries {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (id, lora_id, event_id, event, url, body, state, \
                     attempts, next_attempt_at, created_at) \
                     SELECT $1, $2, $3, $4, w.url, $5, 'pending', 0, $6, $6 FROM lora_webhooks w \
                     WHERE w.lora_id = $2 ON CONFLICT (id) DO NOTHING",
                )
                .bind(&d.id)
                .bind(&lora)
                .bind(d.event_id)
                .bind(d.event.as_str())
                .bind(&d.body)
                .bind(&now)
                .execute(&mut *conn)
                .await?;
            }
            Ok(Some(()))
        })?;
        Ok(done.is_some())
    }

    async fn claim_webhook_deliveries(
        &self,
        holder: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueDelivery>> {
        let now = ts(now);
        let rows: Option<Vec<SqliteRow>> = in_write_tx!(self, |conn| async {
            let rows = sqlx::query(
                "UPDATE webhook_deliveries SET lease_holder = $1, lease_until = $2 \
                 WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' \
                   AND next_attempt_at <= $3 AND (lease_until IS NULL OR lease_until <= $3) \
                   ORDER BY next_attempt_at, id LIMIT $4) \
                 RETURNING id, lora_id, event, url, body, attempts, created_at, \
                   (SELECT user_id FROM lora_models m WHERE m.id = webhook_deliveries.lora_id) AS owner",
            )
            .bind(holder)
            .bind(ts(lease_until))
            .bind(&now)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
            Ok(Some(rows))
        })?;
        rows.unwrap_or_default()
            .iter()
            .map(|r| {
                Ok(DueDelivery {
                    id: r.try_get("id")?,
                    lora_id: uuid_col(r, "lora_id")?.into(),
                    owner: uuid_col(r, "owner")?.into(),
                    event: event_col(r, "event")?,
                    url: r.try_get("url")?,
                    body: r.try_get("body")?,
                    attempts: to_u32(r.try_get("attempts")?, "attempts")?,
                    created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
                })
            })
            .collect()
    }

    async fn record_webhook_attempt(
        &self,
        id: &str,
        holder: &str,
        attempt: &WebhookAttempt,
        next: AttemptNext,
    ) -> Result<bool> {
        let at = ts(attempt.at);
        let (state, next_at, finished) = match next {
            AttemptNext::Delivered => ("delivered", at.clone(), Some(at.clone())),
            AttemptNext::Failed => ("failed", at.clone(), Some(at.clone())),
            AttemptNext::RetryAt(t) => ("pending", ts(t), None),
        };
        let done: Option<()> = in_write_tx!(self, |conn| async {
            let updated = sqlx::query(
                "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
                 next_attempt_at = $2, finished_at = $3, lease_holder = NULL, lease_until = NULL \
                 WHERE id = $4 AND lease_holder = $5 AND state = 'pending' RETURNING attempts",
            )
            .bind(state)
            .bind(&next_at)
            .bind(&finished)
            .bind(id)
            .bind(holder)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = updated else {
                return Ok(None);
            };
            let n: i64 = row.try_get("attempts")?;
            sqlx::query(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(n)
            .bind(&at)
            .bind(attempt.status_code.map(i64::from))
            .bind(&attempt.error)
            .bind(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
            Ok(Some(()))
        })?;
        Ok(done.is_some())
    }

    async fn webhook_deliveries_of(&self, lora: LoraId) -> Result<Vec<WebhookDelivery>> {
        let rows = sqlx::query(
            "SELECT id, event, url, state, created_at, next_attempt_at, finished_at \
             FROM webhook_deliveries WHERE lora_id = $1 ORDER BY event_id, id",
        )
        .bind(lora.to_string())
        .fetch_all(&self.pool)
        .await?;
        let attempts = sqlx::query(
            "SELECT a.delivery_id, a.attempt, a.at, a.status_code, a.error, a.duration_ms \
             FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id \
             WHERE d.lora_id = $1 ORDER BY a.delivery_id, a.attempt",
        )
        .bind(lora.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let state: String = r.try_get("state")?;
            let mut list = Vec::new();
            for a in attempts
                .iter()
                .filter(|a| a.try_get::<String, _>("delivery_id").ok().as_deref() == Some(&id))
            {
                list.push(WebhookAttempt {
                    attempt: to_u32(a.try_get("attempt")?, "attempt")?,
                    at: parse_ts(&a.try_get::<String, _>("at")?)?,
                    status_code: a
                        .try_get::<Option<i64>, _>("status_code")?
                        .and_then(|c| u16::try_from(c).ok()),
                    error: a.try_get("error")?,
                    duration_ms: to_u64(a.try_get("duration_ms")?, "duration_ms")?,
                });
            }
            out.push(WebhookDelivery {
                event: event_col(r, "event")?,
                url: r.try_get("url")?,
                next_attempt_at: if state == "pending" {
                    opt_ts(r, "next_attempt_at")?
                } else {
                    None
                },
                state,
                created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
                finished_at: opt_ts(r, "finished_at")?,
                attempts: list,
                id,
            });
        }
        Ok(out)
    }
}
