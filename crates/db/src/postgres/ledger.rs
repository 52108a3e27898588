//! The cost ledger and the budget's state on Postgres (`crate::ledger`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use loraforge_domain::budget::{CostKind, FinishedRun, RunningRun};
use loraforge_domain::{LoraId, MicroUsd, MonthlyWindow, RunId};

use super::PgRepository;
use super::rows::ts;
use crate::Result;
use crate::common::corrupt;
use crate::ledger::{
    BudgetRuns, CostEntry, LedgerStore, MonthStats, MonthTotals, NewCostEntry, StoredLora,
};

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Inserts `e` on `conn` unless its key exists; whether it was written. Shared with
/// `record_instance_gone`, which writes the run's entry in its own transaction.
pub(super) async fn insert_entry(conn: &mut PgConnection, e: &NewCostEntry) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO cost_entries (lora_id, user_id, backend, kind, month, amount_micros, run_id, \
         idempotency_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(e.lora_id.as_uuid())
    .bind(e.user_id.as_uuid())
    .bind(e.backend.as_deref())
    .bind(e.kind.as_str())
    .bind(&e.month)
    .bind(e.amount.micros())
    .bind(e.run_id.map(|r| r.as_uuid()))
    .bind(&e.idempotency_key)
    .bind(ts(e.created_at))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

type EntryRow = (
    i64,
    Uuid,
    Uuid,
    Option<String>,
    String,
    String,
    i64,
    Option<Uuid>,
    String,
    DateTime<Utc>,
);

#[async_trait]
impl LedgerStore for PgRepository {
    async fn insert_cost_entry(&self, entry: &NewCostEntry) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        insert_entry(&mut conn, entry).await
    }

    async fn lora_cost_entries(&self, lora: LoraId) -> Result<Vec<CostEntry>> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT id, lora_id, user_id, backend, kind, month, amount_micros, run_id, \
             idempotency_key, created_at FROM cost_entries WHERE lora_id = $1 ORDER BY id",
        )
        .bind(lora.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(eid, l, u, backend, kind, month, amount, run, key, at)| {
                Ok(CostEntry {
                    id: eid,
                    entry: NewCostEntry {
                        lora_id: l.into(),
                        user_id: u.into(),
                        backend,
                        kind: CostKind::parse(&kind)
                            .ok_or_else(|| corrupt(format!("kind {kind:?}")))?,
                        month,
                        amount: MicroUsd(amount),
                        run_id: run.map(RunId::from),
                        idempotency_key: key,
                        created_at: at,
                    },
                })
            })
            .collect()
    }

    async fn month_spend(&self, month: &str) -> Result<MicroUsd> {
        let total: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(amount_micros), 0)::bigint FROM cost_entries WHERE month = $1",
        )
        .bind(month)
        .fetch_one(&self.pool)
        .await?;
        Ok(MicroUsd(total))
    }

    async fn month_totals(&self, month: &str) -> Result<MonthTotals> {
        let by_backend: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT backend, SUM(amount_micros)::bigint FROM cost_entries WHERE month = $1 \
             GROUP BY backend ORDER BY backend NULLS FIRST",
        )
        .bind(month)
        .fetch_all(&self.pool)
        .await?;
        let by_kind: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, SUM(amount_micros)::bigint FROM cost_entries WHERE month = $1 \
             GROUP BY kind ORDER BY kind",
        )
        .bind(month)
        .fetch_all(&self.pool)
        .await?;
        Ok(MonthTotals {
            total: MicroUsd(by_kind.iter().map(|(_, a)| a).sum()),
            by_backend: by_backend
                .into_iter()
                .map(|(b, a)| (b, MicroUsd(a)))
                .collect(),
            by_kind: by_kind.into_iter().map(|(k, a)| (k, MicroUsd(a))).collect(),
        })
    }

    async fn budget_override(&self) -> Result<Option<MicroUsd>> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT monthly_budget_micros FROM budget_settings WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.map(MicroUsd))
    }

    async fn set_budget_override(
        &self,
        budget: MicroUsd,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO budget_settings (id, monthly_budget_micros, updated_by, updated_at) \
             VALUES (1, $1, $2, $3) ON CONFLICT (id) DO UPDATE SET \
             monthly_budget_micros = excluded.monthly_budget_micros, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(budget.micros())
        .bind(by)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_budget_alert(
        &self,
        month: &str,
        level: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO budget_alerts (month, level, raised_at) VALUES ($1, $2, $3) \
             ON CONFLICT (month, level) DO NOTHING",
        )
        .bind(month)
        .bind(level)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn budget_runs(
        &self,
        history_since: DateTime<Utc>,
        history_limit: u32,
    ) -> Result<BudgetRuns> {
        let running: Vec<(String, Option<i64>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT backend, price_per_hour_micros, created_at FROM training_runs \
             WHERE instance_gone_at IS NULL ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        let finished: Vec<(String, DateTime<Utc>, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT backend, created_at, instance_gone_at, cost_micros FROM training_runs \
             WHERE instance_gone_at IS NOT NULL AND instance_gone_at >= $1 \
             AND cost_micros IS NOT NULL ORDER BY instance_gone_at DESC LIMIT $2",
        )
        .bind(ts(history_since))
        .bind(i64::from(history_limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(BudgetRuns {
            running: running
                .into_iter()
                .map(|(backend, price, created_at)| RunningRun {
                    backend,
                    price_per_hour: price.map(MicroUsd),
                    created_at,
                })
                .collect(),
            history: finished
                .into_iter()
                .map(|(backend, created, gone, cost)| {
                    (
                        backend,
                        FinishedRun {
                            millis: (gone - created).num_milliseconds().max(0),
                            cost: MicroUsd(cost),
                        },
                    )
                })
                .collect(),
        })
    }

    async fn stored_loras(&self, after: Option<LoraId>, limit: u32) -> Result<Vec<StoredLora>> {
        let rows: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
            "SELECT id, user_id, file_size FROM lora_models \
             WHERE file_size IS NOT NULL AND storage_key IS NOT NULL AND ($1::uuid IS NULL OR id > $1) \
             ORDER BY id LIMIT $2",
        )
        .bind(after.map(|a| a.as_uuid()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(l, u, bytes)| StoredLora {
                lora_id: l.into(),
                user_id: u.into(),
                bytes: count(bytes),
            })
            .collect())
    }

    async fn month_stats(&self, window: MonthlyWindow, top: u32) -> Result<MonthStats> {
        let (start, end) = (ts(window.start), ts(window.end));
        let (completed, failed): (i64, i64) = sqlx::query_as(
            "SELECT \
             COUNT(*) FILTER (WHERE training_status = 'completed' AND completed_at >= $1 AND completed_at < $2), \
             COUNT(*) FILTER (WHERE training_status = 'failed' AND updated_at >= $1 AND updated_at < $2) \
             FROM lora_models",
        )
        .bind(start)
        .bind(end)
        .fetch_one(&self.pool)
        .await?;
        let avg_millis: Option<f64> = sqlx::query_scalar(
            "SELECT AVG(EXTRACT(EPOCH FROM (ended_at - started_at)) * 1000.0)::float8 \
             FROM training_runs WHERE outcome = 'trained' AND ended_at >= $1 AND ended_at < $2",
        )
        .bind(start)
        .bind(end)
        .fetch_one(&self.pool)
        .await?;
        let avg_cost: Option<i64> = sqlx::query_scalar(
            "SELECT (SUM(training_cost_micros) / NULLIF(COUNT(*), 0))::bigint FROM lora_models \
             WHERE training_status = 'completed' AND completed_at >= $1 AND completed_at < $2",
        )
        .bind(start)
        .bind(end)
        .fetch_one(&self.pool)
        .await?;
        let per_user: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT user_id, COUNT(*) AS n FROM lora_models WHERE created_at >= $1 AND created_at < $2 \
             GROUP BY user_id ORDER BY n DESC, user_id LIMIT $3",
        )
        .bind(start)
        .bind(end)
        .bind(i64::from(top))
        .fetch_all(&self.pool)
        .await?;
        let total_uses: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(usage_count), 0)::bigint FROM lora_models")
                .fetch_one(&self.pool)
                .await?;
        let most_used: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "SELECT id, name, usage_count FROM lora_models WHERE usage_count > 0 \
             ORDER BY usage_count DESC, id LIMIT $1",
        )
        .bind(i64::from(top))
        .fetch_all(&self.pool)
        .await?;
        // Open alerts: not acknowledged, whenever they were raised.
        let alerts: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM alerts WHERE acknowledged_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(MonthStats {
            completed: count(completed),
            failed: count(failed),
            // Rounded to the millisecond: a mean of durations, not money.
            avg_training_millis: avg_millis.map(|m| m.round() as i64),
            avg_cost_per_completed: avg_cost.map(MicroUsd),
            loras_per_user: per_user
                .into_iter()
                .map(|(u, n)| (u.into(), count(n)))
                .collect(),
            total_uses: count(total_uses),
            most_used: most_used
                .into_iter()
                .map(|(l, name, n)| (l.into(), name, count(n)))
                .collect(),
            alerts: count(alerts),
        })
    }
}
