//! [`FinishMailStore`] on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use loraforge_domain::{LoraId, UserId};

use super::SqliteRepository;
use super::rows::ts;
use crate::Result;
use crate::finish_mails::{FinishMailStore, FinishedLora, parse_lora};

type Row = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<bool>,
);

#[async_trait]
impl FinishMailStore for SqliteRepository {
    async fn email_on_finish(&self, user: UserId) -> Result<bool> {
        let on: Option<Option<bool>> =
            sqlx::query_scalar("SELECT email_on_finish FROM users WHERE id = $1")
                .bind(user.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(on.flatten().unwrap_or(true))
    }

    async fn set_email_on_finish(
        &self,
        user: UserId,
        email: Option<&str>,
        on: bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, email, email_on_finish, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (id) DO UPDATE SET email = coalesce(excluded.email, users.email), \
             email_on_finish = excluded.email_on_finish, updated_at = excluded.updated_at",
        )
        .bind(user.to_string())
        .bind(email)
        .bind(on)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn finished_unmailed(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<FinishedLora>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT m.id, m.name, m.training_status, m.error, u.email, u.email_on_finish \
             FROM lora_models m LEFT JOIN users u ON u.id = m.user_id \
             WHERE m.training_status IN ('completed', 'failed') AND m.updated_at >= $1 \
             AND NOT EXISTS (SELECT 1 FROM lora_finish_mails f WHERE f.lora_id = m.id) \
             ORDER BY m.updated_at LIMIT $2",
        )
        .bind(ts(since))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, name, status, error, email, on)| {
                Ok(FinishedLora {
                    lora_id: parse_lora(&id)?,
                    name,
                    status,
                    error,
                    email,
                    email_on_finish: on.unwrap_or(true),
                })
            })
            .collect()
    }

    async fn record_finish_mail(
        &self,
        lora: LoraId,
        status: &str,
        outcome: &str,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO lora_finish_mails (lora_id, status, outcome, detail, at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (lora_id) DO NOTHING",
        )
        .bind(lora.to_string())
        .bind(status)
        .bind(outcome)
        .bind(detail)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
