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
        let ids = serde_json::to_string(&loras.iter().map(|l| l.to_string()).collect::<Vec<_>>())
            .map_err(|e| corrupt(e.to_string()))?;
        // Two statements whatever the number of LoRAs: the new pairs, then their counters.
        let counted = in_write_tx!(self, |conn| async {
            let new: Vec<String> = sqlx::query_scalar(
                "INSERT INTO lora_uses (generation_id, lora_id, user_id, day, created_at) \
                 SELECT $1, value, $2, $3, $4 FROM json_each($5) WHERE true \
                 ON CONFLICT (generation_id, lora_id) DO NOTHING RETURNING lora_id",
            )
            .bind(generation_id)
            .bind(&user)
            .bind(&day)
            .bind(&at)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
            if !new.is_empty() {
                let new_ids = serde_json::to_string(&new).map_err(|e| corrupt(e.to_string()))?;
                sqlx::query(
                    "UPDATE lora_models SET usage_count = usage_count + 1 \
                     WHERE id IN (SELECT value FROM json_each($1))",
                )
                .bind(&new_ids)
                .execute(&mut *conn)
                .await?;
            }
            Ok(Some(
                loras
                    .iter()
                    .copied()
                    .filter(|l| new.contains(&l.to_string()))
                    .collect::<Vec<_>>(),
            ))
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
