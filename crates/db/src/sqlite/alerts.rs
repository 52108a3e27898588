//! [`AlertStore`] on SQLite: the dedup runs under the write lock (`BEGIN IMMEDIATE`), so two
//! raises of one alert never make two rows.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::SqliteRepository;
use super::rows::{parse_ts, ts};
use crate::Result;
use crate::alerts::{
    AlertDelivery, AlertQuery, AlertRecord, AlertStore, DeliveryAttempt, DueAlertDelivery, Raised,
    attempt_columns, chrono_cooldown,
};

/// The columns `alert_row` decodes, of `alerts a`.
macro_rules! alert_columns {
    () => {
        "a.id, a.kind, a.subject, a.message, \
         COALESCE(a.first_seen, a.created_at) AS first_seen, COALESCE(a.last_seen, a.created_at) AS last_seen, \
         a.count, a.acknowledged_at, a.acknowledged_by"
    };
}

fn opt_ts(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    row.try_get::<Option<String>, _>(col)?
        .map(|s| parse_ts(&s))
        .transpose()
}

fn alert_row(row: &SqliteRow) -> Result<AlertRecord> {
    Ok(AlertRecord {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        subject: row.try_get("subject")?,
        message: row.try_get("message")?,
        first_seen: parse_ts(&row.try_get::<String, _>("first_seen")?)?,
        last_seen: parse_ts(&row.try_get::<String, _>("last_seen")?)?,
        count: row.try_get("count")?,
        acknowledged_at: opt_ts(row, "acknowledged_at")?,
        acknowledged_by: row.try_get("acknowledged_by")?,
    })
}

async fn raise(
    conn: &mut SqliteConnection,
    kind: &str,
    subject: &str,
    message: &str,
    cooldown: Duration,
    now: DateTime<Utc>,
) -> Result<Raised> {
    let since = now - chrono_cooldown(cooldown);
    let open: Option<(i64, i64)> = sqlx::query_as(
        "SELECT id, count FROM alerts WHERE kind = $1 AND subject = $2 AND acknowledged_at IS NULL \
         AND COALESCE(first_seen, created_at) > $3 ORDER BY id DESC LIMIT 1",
    )
    .bind(kind)
    .bind(subject)
    .bind(ts(since))
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((id, count)) = open {
        sqlx::query(
            "UPDATE alerts SET count = count + 1, message = $1, \
             last_seen = CASE WHEN COALESCE(last_seen, created_at) < $2 THEN $2 ELSE COALESCE(last_seen, created_at) END \
             WHERE id = $3",
        )
        .bind(message)
        .bind(ts(now))
        .bind(id)
        .execute(&mut *conn)
        .await?;
        return Ok(Raised {
            id,
            new: false,
            count: count + 1,
        });
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (kind, subject, message, created_at, first_seen, last_seen, count) \
         VALUES ($1, $2, $3, $4, $4, $4, 1) RETURNING id",
    )
    .bind(kind)
    .bind(subject)
    .bind(message)
    .bind(ts(now))
    .fetch_one(&mut *conn)
    .await?;
    Ok(Raised {
        id,
        new: true,
        count: 1,
    })
}

#[async_trait]
impl AlertStore for SqliteRepository {
    fn set_alert_cooldown(&self, cooldown: Duration) {
        self.alert_cooldown_secs
            .store(cooldown.as_secs(), Ordering::Relaxed);
    }

    fn alert_cooldown(&self) -> Duration {
        Duration::from_secs(self.alert_cooldown_secs.load(Ordering::Relaxed))
    }

    async fn raise_alert(
        &self,
        kind: &str,
        subject: &str,
        message: &str,
        cooldown: Duration,
        now: DateTime<Utc>,
    ) -> Result<Raised> {
        let raised = in_write_tx!(self, |conn| async {
            raise(conn, kind, subject, message, cooldown, now)
                .await
                .map(Some)
        })?;
        raised.ok_or(crate::DbError::NotFound)
    }

    async fn list_alerts(&self, query: AlertQuery) -> Result<Vec<AlertRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            alert_columns!(),
            " FROM alerts a WHERE ($1 = 0 OR a.acknowledged_at IS NULL) \
             AND ($2 IS NULL OR a.id < $2) ORDER BY a.id DESC LIMIT $3"
        ))
        .bind(i64::from(query.open_only))
        .bind(query.before_id)
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert_row).collect()
    }

    async fn get_alert(&self, id: i64) -> Result<Option<AlertRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            alert_columns!(),
            " FROM alerts a WHERE a.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(alert_row).transpose()
    }

    async fn ack_alert(
        &self,
        id: i64,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AlertRecord>> {
        sqlx::query(
            "UPDATE alerts SET acknowledged_at = $1, acknowledged_by = $2 \
             WHERE id = $3 AND acknowledged_at IS NULL",
        )
        .bind(ts(now))
        .bind(by)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.get_alert(id).await
    }

    async fn due_deliveries(
        &self,
        channel: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueAlertDelivery>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            alert_columns!(),
            ", COALESCE(d.attempts, 0) AS attempts FROM alerts a \
             LEFT JOIN alert_deliveries d ON d.alert_id = a.id AND d.channel = $1 \
             WHERE a.acknowledged_at IS NULL AND COALESCE(a.first_seen, a.created_at) >= $2 \
             AND d.delivered_at IS NULL AND d.gave_up_at IS NULL \
             AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $3) \
             ORDER BY a.id LIMIT $4"
        ))
        .bind(channel)
        .bind(ts(since))
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DueAlertDelivery {
                    alert: alert_row(row)?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn record_delivery(
        &self,
        alert_id: i64,
        channel: &str,
        attempt: &DeliveryAttempt,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (delivered, error, next, gave_up) = attempt_columns(attempt);
        let now = ts(now);
        sqlx::query(
            "INSERT INTO alert_deliveries (alert_id, channel, attempts, next_attempt_at, last_error, delivered_at, gave_up_at) \
             VALUES ($1, $2, 1, $3, $4, $5, $6) \
             ON CONFLICT (alert_id, channel) DO UPDATE SET attempts = alert_deliveries.attempts + 1, \
             next_attempt_at = excluded.next_attempt_at, \
             last_error = COALESCE(excluded.last_error, alert_deliveries.last_error), \
             delivered_at = excluded.delivered_at, gave_up_at = excluded.gave_up_at",
        )
        .bind(alert_id)
        .bind(channel)
        .bind(next.map(ts))
        .bind(error)
        .bind(delivered.then(|| now.clone()))
        .bind(gave_up.then(|| now.clone()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn alert_deliveries(&self, alert_id: i64) -> Result<Vec<AlertDelivery>> {
        let rows = sqlx::query(
            "SELECT alert_id, channel, attempts, next_attempt_at, last_error, delivered_at, gave_up_at \
             FROM alert_deliveries WHERE alert_id = $1 ORDER BY channel",
        )
        .bind(alert_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AlertDelivery {
                    alert_id: row.try_get("alert_id")?,
                    channel: row.try_get("channel")?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    next_attempt_at: opt_ts(row, "next_attempt_at")?,
                    last_error: row.try_get("last_error")?,
                    delivered_at: opt_ts(row, "delivered_at")?,
                    gave_up_at: opt_ts(row, "gave_up_at")?,
                })
            })
            .collect()
    }
}

/// [`crate::Repository::record_alert`]: a raise with the configured cooldown.
pub(super) async fn record_alert(
    repo: &SqliteRepository,
    kind: &str,
    subject: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    repo.raise_alert(kind, subject, message, repo.alert_cooldown(), now)
        .await
        .map(|_| ())
}
