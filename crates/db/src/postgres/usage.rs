//! [`UsageStore`] on Postgres: one transaction locks the LoRAs' rows, inserts the use rows that
//! are new (`ON CONFLICT DO NOTHING`) and bumps the counters of exactly those.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use loraforge_domain::{LoraId, UserId};

use super::PgRepository;
use super::rows::ts;
use crate::Result;
use crate::common::to_u64;
use crate::usage::{DayUses, UsageStore, distinct_sorted};

#[async_trait]
impl UsageStore for PgRepository {
    async fn record_uses(
        &self,
        generation_id: &str,
        loras: &[LoraId],
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<LoraId>> {
        let ids: Vec<Uuid> = distinct_sorted(loras).into_iter().map(|l| l.0).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let counted = in_write_tx!(self, |conn| async {
            // The LoRAs' rows first, in id order: every recorder (a retry of this generation or
            // another generation using the same LoRAs) takes them in the same order, so two
            // never deadlock; a retry then waits here and finds its use rows stored.
            sqlx::query("SELECT id FROM lora_models WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(&ids)
                .fetch_all(&mut *conn)
                .await?;
            let new: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO lora_uses (generation_id, lora_id, user_id, day, created_at) \
                 SELECT $1, l, $3, $4, $5 FROM unnest($2::uuid[]) AS t(l) \
                 ON CONFLICT (generation_id, lora_id) DO NOTHING RETURNING lora_id",
            )
            .bind(generation_id)
            .bind(&ids)
            .bind(user.as_uuid())
            .bind(now.date_naive())
            .bind(ts(now))
            .fetch_all(&mut *conn)
            .await?;
            if !new.is_empty() {
                sqlx::query(
                    "UPDATE lora_models SET usage_count = usage_count + 1 WHERE id = ANY($1)",
                )
                .bind(&new)
                .execute(&mut *conn)
                .await?;
            }
            Ok(Some(new))
        })?
        .unwrap_or_default();
        let mut counted: Vec<LoraId> = counted.into_iter().map(LoraId::from).collect();
        counted.sort_by_key(|l| l.0);
        Ok(counted)
    }

    async fn uses_by_day(
        &self,
        lora: LoraId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DayUses>> {
        let rows: Vec<(NaiveDate, i64)> = sqlx::query_as(
            "SELECT day, count(*) FROM lora_uses WHERE lora_id = $1 AND day BETWEEN $2 AND $3 \
             GROUP BY day ORDER BY day",
        )
        .bind(lora.as_uuid())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(day, n)| {
                Ok(DayUses {
                    day,
                    uses: to_u64(n, "uses")?,
                })
            })
            .collect()
    }
}
