//! [`NudgeStore`] on Postgres.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::PgRepository;
use crate::Result;
use crate::nudges::{NUDGE, NUDGES, NudgeStore};

#[async_trait]
impl NudgeStore for PgRepository {
    async fn nudge_backend(&self, backend: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(NUDGE)
            .bind(backend)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn backend_nudges(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        Ok(sqlx::query_as(NUDGES).fetch_all(&self.pool).await?)
    }
}
