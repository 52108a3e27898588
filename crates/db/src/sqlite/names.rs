//! [`NameStore`] on SQLite.

use async_trait::async_trait;

use loraforge_domain::UserId;

use super::SqliteRepository;
use crate::Result;
use crate::names::{NameStore, NameUse};

#[async_trait]
impl NameStore for SqliteRepository {
    async fn name_use(&self, user: UserId, key: &str) -> Result<NameUse> {
        // One indexed lookup (`lora_models_name_key`), counted per side.
        let (yours, others): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(user_id = $1), 0), COALESCE(SUM(user_id <> $1), 0) \
             FROM lora_models WHERE name_key = $2",
        )
        .bind(user.to_string())
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        Ok(NameUse {
            yours: yours > 0,
            others: u64::try_from(others).unwrap_or(0),
        })
    }
}
