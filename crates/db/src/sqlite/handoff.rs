//! [`HandoffStore`] on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::{LoraId, LoraModel};

use super::SqliteRepository;
use super::rows::{lora_record, parse_ts, ts};
use crate::handoff::{CLEAR_FILE_MISSING, HandoffStore, NOTE_FILE_MISSING, RECORD_SHA256};
use crate::{DbError, Result};

#[async_trait]
impl HandoffStore for SqliteRepository {
    async fn newest_completed_of_characters(
        &self,
        character_ids: &[String],
    ) -> Result<Vec<LoraModel>> {
        if character_ids.is_empty() {
            return Ok(Vec::new());
        }
        // One probe of lora_models_character_ready per character.
        let rows = sqlx::query(concat!(
            lora_select!(),
            " WHERE m.id IN (SELECT (SELECT i.id FROM lora_models i INDEXED BY lora_models_character_ready \
               WHERE i.character_id = c.value AND i.training_status = 'completed' AND i.hidden_at IS NULL \
               ORDER BY i.created_at DESC, i.id DESC LIMIT 1) FROM json_each($1) c)"
        ))
        .bind(serde_json::to_string(character_ids).map_err(|e| DbError::Corrupt(e.to_string()))?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| lora_record(r)?.into_model()).collect()
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
