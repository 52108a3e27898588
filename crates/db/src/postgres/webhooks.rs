//! Client webhooks on Postgres (`0011_client_webhooks.sql`): batches move a LoRA's cursor with a
//! compare-and-set; claims skip rows another replica is claiming (`FOR UPDATE SKIP LOCKED`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use loraforge_domain::webhooks::{WebhookEvent, filter_from_text, filter_to_text};
use loraforge_domain::{LoraId, UserId};

use super::PgRepository;
use super::rows::{event, ts};
use crate::Result;
use crate::common::{corrupt, to_u32, to_u64};
use crate::webhooks::{
    AttemptNext, DueDelivery, LoraWebhook, NewWebhook, PendingWebhookEvent, WebhookAttempt,
    WebhookBatch, WebhookDelivery, WebhookStore,
};

/// Writes a new LoRA's webhook inside the create's transaction.
pub(super) async fn insert_webhook(
    conn: &mut PgConnection,
    lora_id: Uuid,
    hook: &NewWebhook,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO lora_webhooks (lora_id, url, events, event_cursor, created_at) VALUES ($1, $2, $3, 0, $4)",
    )
    .bind(lora_id)
    .bind(&hook.url)
    .bind(filter_to_text(&hook.events))
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn event_col(row: &PgRow, col: &str) -> Result<WebhookEvent> {
    let s: String = row.try_get(col)?;
    WebhookEvent::parse(&s).ok_or_else(|| corrupt(format!("webhook event {s:?}")))
}

fn webhook_row(row: &PgRow) -> Result<LoraWebhook> {
    let events: String = row.try_get("events")?;
    Ok(LoraWebhook {
        lora_id: row.try_get::<Uuid, _>("w_lora_id")?.into(),
        owner: row.try_get::<Uuid, _>("owner")?.into(),
        url: row.try_get("url")?,
        events: filter_from_text(&events)
            .ok_or_else(|| corrupt(format!("webhook events {events:?}")))?,
        event_cursor: row.try_get("event_cursor")?,
        last_progress_at: row.try_get("last_progress_at")?,
    })
}

macro_rules! webhook_columns {
    () => {
        "w.lora_id AS w_lora_id, m.user_id AS owner, w.url, w.events, w.event_cursor, w.last_progress_at"
    };
}

async fn upsert_secret(
    repo: &PgRepository,
    user: UserId,
    fresh: &str,
    now: DateTime<Utc>,
    replace: bool,
) -> Result<String> {
    let sql = if replace {
        "INSERT INTO webhook_secrets (user_id, secret, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, created_at = EXCLUDED.created_at \
         RETURNING secret"
    } else {
        // The no-op update makes RETURNING hand back the row a concurrent first use wrote.
        "INSERT INTO webhook_secrets (user_id, secret, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET secret = webhook_secrets.secret RETURNING secret"
    };
    Ok(sqlx::query_scalar(sql)
        .bind(user.as_uuid())
        .bind(fresh)
        .bind(ts(now))
        .fetch_one(&repo.pool)
        .await?)
}

#[async_trait]
impl WebhookStore for PgRepository {
    async fn webhook_secret(
        &self,
        user: UserId,
        fresh: &str,
        now: DateTime<Utc>,
    ) -> Result<String> {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT secret FROM webhook_secrets WHERE user_id = $1")
                .bind(user.as_uuid())
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
        .bind(lora.as_uuid())
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
                Ok(PendingWebhookEvent {
                    webhook: webhook_row(r)?,
                    event: event(r)?,
                })
            })
            .collect()
    }

    async fn record_webhook_batch(&self, batch: &WebhookBatch) -> Result<bool> {
        let lora = batch.lora_id.as_uuid();
        let now = ts(batch.now);
        let done: Option<()> = in_write_tx!(self, |conn| async {
            let moved = sqlx::query(
                "UPDATE lora_webhooks SET event_cursor = $1, \
                 last_progress_at = coalesce($2, last_progress_at) \
                 WHERE lora_id = $3 AND event_cursor = $4",
            )
            .bind(batch.to_cursor)
            .bind(batch.last_progress_at.map(ts))
            .bind(lora)
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
                .bind(lora)
                .bind(d.event_id)
                .bind(d.event.as_str())
                .bind(&d.body)
                .bind(now)
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
        let rows = sqlx::query(
            "UPDATE webhook_deliveries d SET lease_holder = $1, lease_until = $2 \
             FROM lora_models m \
             WHERE m.id = d.lora_id AND d.id IN (SELECT id FROM webhook_deliveries \
               WHERE state = 'pending' AND next_attempt_at <= $3 \
               AND (lease_until IS NULL OR lease_until <= $3) \
               ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING d.id, d.lora_id, d.event, d.url, d.body, d.attempts, d.created_at, \
               m.user_id AS owner",
        )
        .bind(holder)
        .bind(ts(lease_until))
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueDelivery {
                    id: r.try_get("id")?,
                    lora_id: r.try_get::<Uuid, _>("lora_id")?.into(),
                    owner: r.try_get::<Uuid, _>("owner")?.into(),
                    event: event_col(r, "event")?,
                    url: r.try_get("url")?,
                    body: r.try_get("body")?,
                    attempts: to_u32(i64::from(r.try_get::<i32, _>("attempts")?), "attempts")?,
                    created_at: r.try_get("created_at")?,
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
            AttemptNext::Delivered => ("delivered", at, Some(at)),
            AttemptNext::Failed => ("failed", at, Some(at)),
            AttemptNext::RetryAt(t) => ("pending", ts(t), None),
        };
        let done: Option<()> = in_write_tx!(self, |conn| async {
            let updated: Option<i32> = sqlx::query_scalar(
                "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
                 next_attempt_at = $2, finished_at = $3, lease_holder = NULL, lease_until = NULL \
                 WHERE id = $4 AND lease_holder = $5 AND state = 'pending' RETURNING attempts",
            )
            .bind(state)
            .bind(next_at)
            .bind(finished)
            .bind(id)
            .bind(holder)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(n) = updated else {
                return Ok(None);
            };
            sqlx::query(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(n)
            .bind(at)
            .bind(attempt.status_code.map(i32::from))
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
        .bind(lora.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        let attempts = sqlx::query(
            "SELECT a.delivery_id, a.attempt, a.at, a.status_code, a.error, a.duration_ms \
             FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id \
             WHERE d.lora_id = $1 ORDER BY a.delivery_id, a.attempt",
        )
        .bind(lora.as_uuid())
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
                    attempt: to_u32(i64::from(a.try_get::<i32, _>("attempt")?), "attempt")?,
                    at: a.try_get("at")?,
                    status_code: a
                        .try_get::<Option<i32>, _>("status_code")?
                        .and_then(|c| u16::try_from(c).ok()),
                    error: a.try_get("error")?,
                    duration_ms: to_u64(a.try_get("duration_ms")?, "duration_ms")?,
                });
            }
            let next: DateTime<Utc> = r.try_get("next_attempt_at")?;
            out.push(WebhookDelivery {
                event: event_col(r, "event")?,
                url: r.try_get("url")?,
                next_attempt_at: (state == "pending").then_some(next),
                state,
                created_at: r.try_get("created_at")?,
                finished_at: r.try_get("finished_at")?,
                attempts: list,
                id,
            });
        }
        Ok(out)
    }
}
