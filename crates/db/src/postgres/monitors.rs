//! [`MonitorStore`] on Postgres.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::PgRepository;
use crate::Result;
use crate::monitors::{
    CREATED_SQL, FAILED_SQL, FINISHED_SQL, MonitorStats, MonitorStore, StuckCleanup, count,
};

#[async_trait]
impl MonitorStore for PgRepository {
    async fn monitor_stats(
        &self,
        day_since: DateTime<Utc>,
        month_start: DateTime<Utc>,
    ) -> Result<MonitorStats> {
        let scalar = |sql: &'static str, at: DateTime<Utc>| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(at)
                .fetch_one(&self.pool)
                .await
        };
        let (completed, cost): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(training_cost_micros), 0)::bigint FROM lora_models \
             WHERE training_status = 'completed' AND completed_at >= $1",
        )
        .bind(month_start)
        .fetch_one(&self.pool)
        .await?;
        let bytes: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(file_size), 0)::bigint FROM lora_models WHERE storage_key IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(MonitorStats {
            finished_in_day: count(scalar(FINISHED_SQL, day_since).await?),
            failed_in_day: count(scalar(FAILED_SQL, day_since).await?),
            completed_in_month: count(completed),
            cost_in_month_micros: cost,
            created_in_month: count(scalar(CREATED_SQL, month_start).await?),
            stored_lora_bytes: count(bytes),
        })
    }

    async fn stuck_cleanups(&self, min_failures: u32) -> Result<Vec<StuckCleanup>> {
        let rows: Vec<(String, String, String, i32)> = sqlx::query_as(
            "SELECT id::text, backend, provider_id, terminate_failures FROM training_runs \
             WHERE instance_gone_at IS NULL AND terminate_failures >= $1 ORDER BY id",
        )
        .bind(i32::try_from(min_failures).unwrap_or(i32::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(run_id, backend, provider_id, n)| StuckCleanup {
                run_id,
                backend,
                provider_id,
                terminate_failures: u32::try_from(n).unwrap_or(0),
            })
            .collect())
    }
}
