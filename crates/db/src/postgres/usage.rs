//! [`UsageStore`] on Postgres: one transaction locks the LoRAs' rows, inserts the use rows that
//! are new (`ON CONFLICT DO NOTHING`) and bumps the counters of exactly those.

use async_trait::async_trait;
use chrono::NaiveDate;
use uuid::Uuid;

use loraforge_domain::LoraId;

use super::PgRepository;
use super::rows::ts;
use crate::Result;
use crate::common::to_u64;
use crate::usage::{DayUses, UsageStore, UseRecord, batch_loras, batch_pairs, split_counted};

#[async_trait]
impl UsageStore for PgRepository {
    async fn record_use_batch(&self, uses: &[UseRecord]) -> Result<Vec<Vec<LoraId>>> {
        let pairs = batch_pairs(uses);
        if pairs.is_empty() {
            return Ok(vec![Vec::new(); uses.len()]);
        }
        let locked: Vec<Uuid> = batch_loras(&pairs).into_iter().map(|l| l.0).collect();
        let (mut gens, mut loras, mut users, mut days, mut ats) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, l) in &pairs {
            let u = &uses[*i];
            gens.push(u.generation_id.clone());
            loras.push(l.0);
            users.push(u.user.as_uuid());
            days.push(u.at.date_naive());
            ats.push(ts(u.at));
        }
        let inserted = in_write_tx!(self, |conn| async {
            // The LoRAs' rows first, in id order: every recorder takes them in the same order,
            // so two never deadlock; a retry then waits here and finds its use rows stored.
            sqlx::query("SELECT id FROM lora_models WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(&locked)
                .fetch_all(&mut *conn)
                .await?;
            let new: Vec<(String, Uuid)> = sqlx::query_as(
                "INSERT INTO lora_uses (generation_id, lora_id, user_id, day, created_at) \
                 SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::date[], $5::timestamptz[]) \
                 ON CONFLICT (generation_id, lora_id) DO NOTHING RETURNING generation_id, lora_id",
            )
            .bind(&gens)
            .bind(&loras)
            .bind(&users)
            .bind(&days)
            .bind(&ats)
            .fetch_all(&mut *conn)
            .await?;
            if !new.is_empty() {
                // Each LoRA id once per new pair: the counter goes up by its count.
                let new_ids: Vec<Uuid> = new.iter().map(|(_, l)| *l).collect();
                sqlx::query(
                    "UPDATE lora_models m SET usage_count = m.usage_count + c.n \
                     FROM (SELECT l, count(*) AS n FROM unnest($1::uuid[]) AS t(l) GROUP BY l) c \
                     WHERE m.id = c.l",
                )
                .bind(&new_ids)
                .execute(&mut *conn)
                .await?;
            }
            Ok(Some(new))
        })?
        .unwrap_or_default();
        Ok(split_counted(
            uses,
            &pairs,
            inserted.into_iter().map(|(g, l)| (g, LoraId::from(l))),
        ))
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
