//! The operators' aggregates on Postgres ([`MetricsStore`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::PgRepository;
use crate::Result;
use crate::common::{parse_breaker_state, parse_status, to_u64};
use crate::metrics::{MetricsStore, OpsSnapshot, RunTotals, SeededRuns};

#[async_trait]
impl MetricsStore for PgRepository {
    async fn ops_snapshot(&self) -> Result<OpsSnapshot> {
        let mut snap = OpsSnapshot::default();
        for row in sqlx::query(
            "SELECT training_status, COUNT(*) AS n FROM lora_models GROUP BY training_status",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let status = parse_status(&row.try_get::<String, _>("training_status")?)?;
            snap.loras_by_status
                .push((status, to_u64(row.try_get("n")?, "count")?));
        }
        snap.oldest_queued_created_at = sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
            "SELECT MIN(created_at) FROM lora_models WHERE training_status = 'queued'",
        )
        .fetch_one(&self.pool)
        .await?;
        for row in sqlx::query(
            "SELECT backend, outcome, COUNT(*) AS n, \
                    ROUND(SUM(EXTRACT(EPOCH FROM (ended_at - started_at))))::bigint AS secs \
             FROM training_runs WHERE outcome IS NOT NULL AND ended_at IS NOT NULL \
             GROUP BY backend, outcome ORDER BY backend, outcome",
        )
        .fetch_all(&self.pool)
        .await?
        {
            snap.ended_runs.push(RunTotals {
                backend: row.try_get("backend")?,
                outcome: row.try_get("outcome")?,
                runs: to_u64(row.try_get("n")?, "count")?,
                seconds: to_u64(row.try_get::<i64, _>("secs")?.max(0), "seconds")?,
            });
        }
        for row in sqlx::query(
            "SELECT backend, COUNT(*) AS n FROM training_runs \
             WHERE instance_gone_at IS NULL GROUP BY backend ORDER BY backend",
        )
        .fetch_all(&self.pool)
        .await?
        {
            snap.live_runs
                .push((row.try_get("backend")?, to_u64(row.try_get("n")?, "count")?));
        }
        for row in sqlx::query("SELECT backend, state FROM backend_breakers ORDER BY backend")
            .fetch_all(&self.pool)
            .await?
        {
            snap.breakers.push((
                row.try_get("backend")?,
                parse_breaker_state(&row.try_get::<String, _>("state")?)?,
            ));
        }
        for row in sqlx::query("SELECT kind, COUNT(*) AS n FROM alerts WHERE acknowledged_at IS NULL GROUP BY kind ORDER BY kind")
            .fetch_all(&self.pool)
            .await?
        {
            snap.alerts_by_kind
                .push((row.try_get("kind")?, to_u64(row.try_get("n")?, "count")?));
        }
        Ok(snap)
    }

    async fn seed_runs(&self, live: u32) -> Result<SeededRuns> {
        let ended = sqlx::query(
            "INSERT INTO training_runs (id, lora_id, attempt, backend, engine, instance_name, provider_id, price_per_hour_micros, created_at, started_at, ended_at, outcome, settled_at, cost_micros, instance_gone_at) SELECT gen_random_uuid(), id, 1, CASE WHEN substr(id::text, 36, 1) IN ('0', '1', '2', '3') THEN 'local' ELSE 'runpod' END, 'bench-seed', 'loraforge-' || id::text || '-1', 'seed-' || id::text, 790000, created_at, created_at, created_at + interval '30 minutes', CASE training_status WHEN 'completed' THEN 'trained' ELSE 'non_finite_loss' END, created_at + interval '30 minutes', 395000, created_at + interval '30 minutes' FROM lora_models l WHERE training_status IN ('completed', 'failed') AND NOT EXISTS (SELECT 1 FROM training_runs r WHERE r.lora_id = l.id)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        let live = sqlx::query(
            "INSERT INTO training_runs (id, lora_id, attempt, backend, engine, instance_name, provider_id, price_per_hour_micros, created_at, started_at) SELECT gen_random_uuid(), id, 1, CASE WHEN substr(id::text, 36, 1) IN ('0', '1', '2', '3') THEN 'local' ELSE 'runpod' END, 'bench-seed', 'loraforge-' || id::text || '-1', 'seed-' || id::text, 790000, created_at, created_at FROM lora_models l WHERE training_status = 'training' AND NOT EXISTS (SELECT 1 FROM training_runs r WHERE r.lora_id = l.id) ORDER BY created_at LIMIT $1",
        )
        .bind(i64::from(live))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(SeededRuns { ended, live })
    }
}
