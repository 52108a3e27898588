//! [`UsageStore`] on SQLite: the use rows and the counter move under the one write lock.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use loraforge_domain::{LoraId, UserId};

use super::SqliteRepository;
use super::rows::ts;
use crate::Result;
use crate::common::{corrupt, to_u64};
use crate::usage::{DayUses, UsageStore, distinct_sorted};

const DAY: &str = "%Y-%m-%d";

#[async_trait]
impl UsageStore for SqliteRepository {
    async fn record_uses(
        &self,
        generation_id: &str,
        loras: &[LoraId],
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<LoraId>> {
        let loras = distinct_sorted(loras);
        if loras.is_empty() {
            return Ok(Vec::new());
        }
        let day = now.date_naive().format(DAY).to_string();
        let at = ts(now);
        let user = user.to_string();
        let counted = in_write_tx!(self, |conn| async {
            let mut counted = Vec::new();
            for lora in &loras {
                let id = lora.to_string();
                let new = sqlx::query(
                    "INSERT INTO lora_uses (generation_id, lora_id, user_id, day, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (generation_id, lora_id) DO NOTHING",
                )
                .bind(generation_id)
                .bind(&id)
                .bind(&user)
                .bind(&day)
                .bind(&at)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                    == 1;
                if new {
                    sqlx::query(
                        "UPDATE lora_models SET usage_count = usage_count + 1 WHERE id = $1",
                    )
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
                    counted.push(*lora);
                }
            }
            Ok(Some(counted))
        })?;
        Ok(counted.unwrap_or_default())
    }

    async fn uses_by_day(
        &self,
        lora: LoraId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DayUses>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT day, count(*) FROM lora_uses WHERE lora_id = $1 AND day >= $2 AND day <= $3 \
             GROUP BY day ORDER BY day",
        )
        .bind(lora.to_string())
        .bind(from.format(DAY).to_string())
        .bind(to.format(DAY).to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(day, n)| {
                Ok(DayUses {
                    day: NaiveDate::parse_from_str(&day, DAY)
                        .map_err(|e| corrupt(format!("lora_uses.day {day:?}: {e}")))?,
                    uses: to_u64(n, "uses")?,
                })
            })
            .collect()
    }
}
