//! Users' own records (issue 9 item 6: display names) and idempotency look-ups.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use loraforge_domain::UserId;

use super::PgRepository;
use super::rows::{fetch_lora, ts};
use crate::common::corrupt;
use crate::{IdempotentLora, Result, UserProfile};

pub(super) async fn user_profile(pool: &PgPool, user: UserId) -> Result<Option<UserProfile>> {
    let row = sqlx::query("SELECT email, display_name FROM users WHERE id = $1")
        .bind(user.as_uuid())
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        Ok(UserProfile {
            id: user,
            email: r.try_get("email")?,
            display_name: r.try_get("display_name")?,
        })
    })
    .transpose()
}

pub(super) async fn set_display_name(
    repo: &PgRepository,
    user: UserId,
    email: Option<&str>,
    display_name: Option<&str>,
    now: DateTime<Utc>,
) -> Result<UserProfile> {
    let done: Result<Option<()>> = in_write_tx!(repo, |conn| async {
        sqlx::query(
            "INSERT INTO users (id, email, display_name, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (id) DO UPDATE SET email = coalesce(EXCLUDED.email, users.email), \
             display_name = EXCLUDED.display_name, updated_at = EXCLUDED.updated_at",
        )
        .bind(user.as_uuid())
        .bind(email)
        .bind(display_name)
        .bind(ts(now))
        .execute(&mut *conn)
        .await?;
        Ok(Some(()))
    });
    done?;
    user_profile(&repo.pool, user)
        .await?
        .ok_or_else(|| corrupt("a user written is gone"))
}

pub(super) async fn idempotent_lora(
    pool: &PgPool,
    user: UserId,
    key: &str,
) -> Result<Option<IdempotentLora>> {
    let mut conn = pool.acquire().await?;
    let prior: Option<(String, Uuid)> = sqlx::query_as(
        "SELECT request_hash, lora_id FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user.as_uuid())
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((request_hash, lora_id)) = prior else {
        return Ok(None);
    };
    let lora = fetch_lora(&mut conn, lora_id)
        .await?
        .ok_or_else(|| corrupt(format!("idempotency key names a missing LoRA {lora_id}")))?;
    Ok(Some(IdempotentLora { request_hash, lora }))
}
