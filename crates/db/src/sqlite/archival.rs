//! [`ArchivalStore`] on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::LoraId;

use super::SqliteRepository;
use super::rows::{parse_ts, ts};
use crate::Result;
use crate::archival::{ArchivalCandidate, ArchivalStore};
use crate::finish_mails::parse_lora;

#[async_trait]
impl ArchivalStore for SqliteRepository {
    async fn archival_candidates(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ArchivalCandidate>> {
        let rows: Vec<(String, String, String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT m.id, m.name, COALESCE(m.completed_at, m.created_at) AS last, m.file_size, \
             (SELECT MAX(a.approved_at) FROM archival_approvals a WHERE a.lora_id = m.id) \
             FROM lora_models m WHERE m.training_status = 'completed' AND m.storage_key IS NOT NULL \
             AND COALESCE(m.completed_at, m.created_at) < $1 ORDER BY last, m.id LIMIT $2",
        )
        .bind(ts(cutoff))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, name, last, size, approved)| {
                Ok(ArchivalCandidate {
                    lora_id: parse_lora(&id)?,
                    name,
                    last_activity: parse_ts(&last)?,
                    file_size: u64::try_from(size.unwrap_or(0)).unwrap_or(0),
                    approved_at: approved.as_deref().map(parse_ts).transpose()?,
                })
            })
            .collect()
    }

    async fn approve_archival(&self, lora: LoraId, by: &str, now: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO archival_approvals (lora_id, approved_by, approved_at) \
             SELECT id, $2, $3 FROM lora_models WHERE id = $1",
        )
        .bind(lora.to_string())
        .bind(by)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
