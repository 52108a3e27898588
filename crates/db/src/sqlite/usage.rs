//! [`UsageStore`] on SQLite: the use rows and the counter move under the one write lock.

use async_trait::async_trait;
use chrono::NaiveDate;

use loraforge_domain::LoraId;

use super::SqliteRepository;
use super::rows::ts;
use crate::Result;
use crate::common::{corrupt, to_u64};
use crate::usage::{DayUses, UsageStore, UseRecord, batch_pairs, split_counted};

const DAY: &str = "%Y-%m-%d";

#[async_trait]
impl UsageStore for SqliteRepository {
    async fn record_use_batch(&self, uses: &[UseRecord]) -> Result<Vec<Vec<LoraId>>> {
        let pairs = batch_pairs(uses);
        if pairs.is_empty() {
            return Ok(vec![Vec::new(); uses.len()]);
        }
        // One row per pair, [generation, LoRA, user, day, at], read back with json_each.
        let rows: Vec<[String; 5]> = pairs
            .iter()
            .map(|(i, l)| {
                let u = &uses[*i];
                [
                    u.generation_id.clone(),
                    l.to_string(),
                    u.user.to_string(),
                    u.at.date_naive().format(DAY).to_string(),
                    ts(u.at),
                ]
            })
            .collect();
        let rows = serde_json::to_string(&rows).map_err(|e| corrupt(e.to_string()))?;
        // Two statements whatever the batch: the new pairs, then their LoRAs' counters.
        let inserted = in_write_tx!(self, |conn| async {
            let new: Vec<(String, String)> = sqlx::query_as(
                "INSERT INTO lora_uses (generation_id, lora_id, user_id, day, created_at) \
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                        json_extract(value, '$[4]') \
                 FROM json_each($1) WHERE true \
                 ON CONFLICT (generation_id, lora_id) DO NOTHING RETURNING generation_id, lora_id",
            )
            .bind(&rows)
            .fetch_all(&mut *conn)
            .await?;
            if !new.is_empty() {
                // Each LoRA id once per new pair: the counter goes up by its count.
                let new_ids =
                    serde_json::to_string(&new.iter().map(|(_, l)| l).collect::<Vec<_>>())
                        .map_err(|e| corrupt(e.to_string()))?;
                sqlx::query(
                    "UPDATE lora_models SET usage_count = usage_count + \
                       (SELECT count(*) FROM json_each($1) WHERE value = lora_models.id) \
                     WHERE id IN (SELECT value FROM json_each($1))",
                )
                .bind(&new_ids)
                .execute(&mut *conn)
                .await?;
            }
            Ok(Some(new))
        })?
        .unwrap_or_default();
        let inserted = inserted
            .into_iter()
            .map(|(g, l)| {
                Ok((
                    g,
                    l.parse::<LoraId>()
                        .map_err(|e| corrupt(format!("lora_uses.lora_id {l}: {e}")))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(split_counted(uses, &pairs, inserted))
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
