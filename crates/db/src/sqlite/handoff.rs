//! [`HandoffStore`] on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::{LoraId, LoraModel};

use super::SqliteRepository;
use super::rows::{lora_record, parse_ts, ts};
use crate::handoff::{
    CLEAR_FILE_MISSING, HandoffStore, NEWEST_COMPLETED_OF_CHARACTER, NOTE_FILE_MISSING,
    RECORD_SHA256,
};
use crate::{DbError, Result};

#[async_trait]
impl HandoffStore for SqliteRepository {
    async fn newest_completed_of_character(&self, character_id: &str) -> Result<Option<LoraModel>> {
        let sql = format!("{}{NEWEST_COMPLETED_OF_CHARACTER}", lora_select!());
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(character_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| lora_record(&r)?.into_model()).transpose()
    }

    async fn record_sha256(&self, lora: LoraId, sha256: &str) -> Result<()> {
        sqlx::query(RECORD_SHA256)
            .bind(sha256)
            .bind(lora.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn note_file_missing(&self, lora: LoraId, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        let first: Option<String> = sqlx::query_scalar(NOTE_FILE_MISSING)
            .bind(ts(now))
            .bind(lora.to_string())
            .fetch_optional(&self.pool)
            .await?;
        parse_ts(&first.ok_or(DbError::NotFound)?)
    }

    async fn clear_file_missing(&self, lora: LoraId) -> Result<()> {
        sqlx::query(CLEAR_FILE_MISSING)
            .bind(lora.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
