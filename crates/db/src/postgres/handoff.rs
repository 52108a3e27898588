//! [`HandoffStore`] on Postgres.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::{LoraId, LoraModel};

use super::PgRepository;
use super::rows::{lora_record, ts};
use crate::handoff::{CLEAR_FILE_MISSING, HandoffStore, NOTE_FILE_MISSING, RECORD_SHA256};
use crate::{DbError, Result};

#[async_trait]
impl HandoffStore for PgRepository {
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
            " WHERE m.id IN (SELECT (SELECT i.id FROM lora_models i \
               WHERE i.character_id = c.id AND i.training_status = 'completed' AND i.hidden_at IS NULL \
               ORDER BY i.created_at DESC, i.id DESC LIMIT 1) FROM unnest($1::text[]) AS c(id))"
        ))
        .bind(character_ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| lora_record(r)?.into_model()).collect()
    }

    async fn record_sha256(&self, lora: LoraId, sha256: &str) -> Result<()> {
        sqlx::query(RECORD_SHA256)
            .bind(sha256)
            .bind(lora.as_uuid())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn note_file_missing(&self, lora: LoraId, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        let first: Option<DateTime<Utc>> = sqlx::query_scalar(NOTE_FILE_MISSING)
            .bind(ts(now))
            .bind(lora.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        first.ok_or(DbError::NotFound)
    }

    async fn clear_file_missing(&self, lora: LoraId) -> Result<()> {
        sqlx::query(CLEAR_FILE_MISSING)
            .bind(lora.as_uuid())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
