//! [`NudgeStore`] on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::SqliteRepository;
use super::rows::{parse_ts, ts};
use crate::Result;
use crate::nudges::{NUDGE, NUDGES, NudgeStore};

#[async_trait]
impl NudgeStore for SqliteRepository {
    async fn nudge_backend(&self, backend: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(NUDGE)
            .bind(backend)
            .bind(ts(at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn backend_nudges(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(NUDGES).fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(b, at)| Ok((b, parse_ts(&at)?)))
            .collect()
    }
}
