//! Training runs on SQLite: one row per attempt, outcomes (first report wins), settling a run's
//! job in one transaction, and the end of its instance with its cost.

use chrono::{DateTime, Utc};
use sqlx::{SqliteConnection, SqlitePool};

use loraforge_domain::status::transition;
use loraforge_domain::{LoraId, LoraModel, MicroUsd, RunId, StatusEvent, TrainingRun};

use super::SqliteRepository;
use super::jobs::change_status;
use super::rows::{fetch_written, insert_event, run_record, ts};
use crate::common::{CAS_ATTEMPTS, corrupt, parse_status, progress_data, settle_steps, to_u32};
use crate::{DbError, EventDetail, FaultPoint, NewRun, OpenRun, Result, Settle};

/// Every column of `training_runs r`, for `rows::run_record`.
macro_rules! run_columns {
    () => {
        "r.id, r.lora_id, r.attempt, r.backend, r.engine, r.instance_name, r.provider_id, r.gpu_type, \
         r.price_per_hour_micros, r.created_at, r.started_at, r.ended_at, r.outcome, r.reason, r.result, \
         r.settled_at, r.cost_micros, r.instance_gone_at, r.terminate_failures, r.next_terminate_at, r.route_reason"
    };
}

async fn fetch_run(conn: &mut SqliteConnection, id: &str) -> Result<Option<TrainingRun>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM training_runs r WHERE r.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| run_record(&r)?.into_run()).transpose()
}

pub(super) async fn insert_run(repo: &SqliteRepository, run: &NewRun) -> Result<TrainingRun> {
    let lora = run.lora_id.to_string();
    let id = run.id.to_string();
    let inserted = in_write_tx!(repo, |conn| async {
        let holder: Option<(Option<String>, i64, String)> = sqlx::query_as(
            "SELECT j.worker, j.attempt, m.training_status FROM training_jobs j JOIN lora_models m ON m.id = j.lora_id \
             WHERE j.lora_id = $1",
        )
        .bind(&lora)
        .fetch_optional(&mut *conn)
        .await?;
        let held = holder.is_some_and(|(worker, attempt, status)| {
            worker.as_deref() == Some(run.engine.as_str())
                && attempt == i64::from(run.attempt)
                && status == "training"
        });
        if !held {
            return Err(DbError::NotFound);
        }
        sqlx::query(
            "INSERT INTO training_runs (id, lora_id, attempt, backend, engine, instance_name, provider_id, gpu_type, \
             price_per_hour_micros, created_at, started_at, route_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&id)
        .bind(&lora)
        .bind(i64::from(run.attempt))
        .bind(&run.backend)
        .bind(&run.engine)
        .bind(&run.instance_name)
        .bind(&run.provider_id)
        .bind(&run.gpu_type)
        .bind(run.price_per_hour.map(MicroUsd::micros))
        .bind(ts(run.created_at))
        .bind(ts(run.started_at))
        .bind(&run.route_reason)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE training_jobs SET run_id = $1, start_failures = 0, next_attempt_at = NULL WHERE lora_id = $2")
            .bind(&id)
            .bind(&lora)
            .execute(&mut *conn)
            .await?;
        fetch_run(conn, &id).await
    })?;
    inserted.ok_or_else(|| corrupt(format!("run {id} vanished inside its own transaction")))
}

pub(super) async fn get_run(pool: &SqlitePool, id: RunId) -> Result<Option<TrainingRun>> {
    let mut conn = pool.acquire().await?;
    fetch_run(&mut conn, &id.to_string()).await
}

pub(super) async fn runs_of(pool: &SqlitePool, lora: LoraId) -> Result<Vec<TrainingRun>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM training_runs r WHERE r.lora_id = $1 ORDER BY r.attempt"
    ))
    .bind(lora.to_string())
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| run_record(r)?.into_run()).collect()
}

pub(super) async fn open_runs(pool: &SqlitePool) -> Result<Vec<OpenRun>> {
    use sqlx::Row;
    let rows = sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        ", m.training_status AS job_status, j.run_id AS job_run, j.worker AS job_worker, j.failures AS job_failures, \
         j.attempt AS job_attempt FROM training_runs r JOIN lora_models m ON m.id = r.lora_id \
         JOIN training_jobs j ON j.lora_id = r.lora_id WHERE r.instance_gone_at IS NULL ORDER BY r.created_at, r.id"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let run = run_record(row)?.into_run()?;
            let job_run: Option<String> = row.try_get("job_run")?;
            Ok(OpenRun {
                current: job_run.as_deref() == Some(run.id.to_string().as_str()),
                job_status: parse_status(&row.try_get::<String, _>("job_status")?)?,
                job_worker: row.try_get("job_worker")?,
                job_failures: to_u32(row.try_get("job_failures")?, "failures")?,
                job_attempt: to_u32(row.try_get("job_attempt")?, "attempt")?,
                run,
            })
        })
        .collect()
}

pub(super) async fn record_run_outcome(
    repo: &SqliteRepository,
    id: RunId,
    code: &str,
    reason: Option<&str>,
    result: Option<&serde_json::Value>,
    now: DateTime<Utc>,
) -> Result<bool> {
    repo.faults.check(FaultPoint::RunOutcome)?;
    let done = sqlx::query(
        "UPDATE training_runs SET outcome = $1, reason = $2, result = $3, ended_at = $4 WHERE id = $5 AND outcome IS NULL",
    )
    .bind(code)
    .bind(reason)
    .bind(result.map(serde_json::Value::to_string))
    .bind(ts(now))
    .bind(id.to_string())
    .execute(&repo.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn settle_run(
    repo: &SqliteRepository,
    id: RunId,
    settle: Settle,
    now: DateTime<Utc>,
) -> Result<Option<LoraModel>> {
    repo.faults.check(FaultPoint::Settle)?;
    let run_id = id.to_string();
    let now = ts(now);
    let (steps, progress) = settle_steps(&settle);
    for _ in 0..CAS_ATTEMPTS {
        let settled = in_write_tx!(repo, |conn| async {
            let lora: Option<String> = sqlx::query_scalar(
                "UPDATE training_runs SET settled_at = $1 WHERE id = $2 AND settled_at IS NULL RETURNING lora_id",
            )
            .bind(&now)
            .bind(&run_id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(lora) = lora else {
                return Ok(Some(None));
            };
            let mut moved_on = false;
            for (i, step) in steps.iter().enumerate() {
                let from: String =
                    sqlx::query_scalar("SELECT training_status FROM lora_models WHERE id = $1")
                        .bind(&lora)
                        .fetch_one(&mut *conn)
                        .await?;
                let from = parse_status(&from)?;
                let to = match transition(from, step.event) {
                    Ok(to) => to,
                    // The job moved on before this run's outcome was acted on (a cancel won).
                    Err(_) if i == 0 => {
                        moved_on = true;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                if change_status(conn, &lora, from, to, step.event, &step.detail, &now)
                    .await?
                    .is_none()
                {
                    return Err(DbError::Conflict);
                }
            }
            if !moved_on {
                if let Settle::Requeue { counted: true, .. } = &settle {
                    sqlx::query(
                        "UPDATE training_jobs SET failures = failures + 1 WHERE lora_id = $1",
                    )
                    .bind(&lora)
                    .execute(&mut *conn)
                    .await?;
                }
                if let Some(p) = &progress {
                    let status: String = sqlx::query_scalar(
                        "UPDATE lora_models SET stage = $1, progress = $2, estimated_remaining = $3, updated_at = $4 \
                         WHERE id = $5 RETURNING training_status",
                    )
                    .bind(&p.stage)
                    .bind(i64::from(p.percent))
                    .bind(p.estimated_remaining.map(i64::from))
                    .bind(&now)
                    .bind(&lora)
                    .fetch_one(&mut *conn)
                    .await?;
                    insert_event(
                        conn,
                        &lora,
                        "progress",
                        parse_status(&status)?,
                        &progress_data(p),
                        &now,
                    )
                    .await?;
                }
            }
            Ok(Some(Some(fetch_written(conn, &lora).await?)))
        });
        match settled {
            Ok(Some(model)) => return Ok(model),
            Ok(None) => return Ok(None),
            Err(DbError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(DbError::Conflict)
}

pub(super) async fn record_instance_gone(
    repo: &SqliteRepository,
    id: RunId,
    cost: MicroUsd,
    now: DateTime<Utc>,
) -> Result<bool> {
    repo.faults.check(FaultPoint::InstanceGone)?;
    let run_id = id.to_string();
    let at = ts(now);
    let recorded = in_write_tx!(repo, |conn| async {
        let run: Option<(String, String)> = sqlx::query_as(
            "UPDATE training_runs SET instance_gone_at = $1, cost_micros = $2 \
             WHERE id = $3 AND instance_gone_at IS NULL RETURNING lora_id, backend",
        )
        .bind(&at)
        .bind(cost.micros())
        .bind(&run_id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((lora, backend)) = run else {
            return Ok(None);
        };
        let user: String = sqlx::query_scalar(
            "UPDATE lora_models SET training_cost_micros = training_cost_micros + $1 WHERE id = $2 \
             RETURNING user_id",
        )
        .bind(cost.micros())
        .bind(&lora)
        .fetch_one(&mut *conn)
        .await?;
        // The ledger's entry for the run, in the same commit (training_cost = sum of entries).
        let entry = crate::ledger::NewCostEntry {
            lora_id: lora
                .parse()
                .map_err(|_| crate::common::corrupt(format!("lora_id {lora:?}")))?,
            user_id: user
                .parse()
                .map_err(|_| crate::common::corrupt(format!("user_id {user:?}")))?,
            backend: Some(backend),
            kind: loraforge_domain::budget::CostKind::Gpu,
            month: loraforge_domain::budget::month_key(now),
            amount: cost,
            run_id: Some(id),
            idempotency_key: loraforge_domain::budget::gpu_entry_key(id),
            created_at: now,
        };
        super::ledger::insert_entry(conn, &entry).await?;
        Ok(Some(()))
    })?;
    Ok(recorded.is_some())
}

pub(super) async fn record_terminate_failure(
    pool: &SqlitePool,
    id: RunId,
    error: &str,
    next_at: DateTime<Utc>,
) -> Result<u32> {
    let failures: Option<i64> = sqlx::query_scalar(
        "UPDATE training_runs SET terminate_failures = terminate_failures + 1, last_terminate_error = $1, \
         next_terminate_at = $2 WHERE id = $3 RETURNING terminate_failures",
    )
    .bind(error)
    .bind(ts(next_at))
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    to_u32(failures.ok_or(DbError::NotFound)?, "terminate_failures")
}

pub(super) async fn set_status_message(
    pool: &SqlitePool,
    id: LoraId,
    message: Option<&str>,
) -> Result<()> {
    let done = sqlx::query("UPDATE lora_models SET status_message = $1 WHERE id = $2")
        .bind(message)
        .bind(id.to_string())
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

pub(super) async fn unclaim(
    repo: &SqliteRepository,
    id: LoraId,
    worker: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let lora = id.to_string();
    let now = ts(now);
    let done = in_write_tx!(repo, |conn| async {
        let held: Option<String> = sqlx::query_scalar(
            "SELECT m.training_status FROM training_jobs j JOIN lora_models m ON m.id = j.lora_id \
             WHERE j.lora_id = $1 AND j.worker = $2 AND j.run_id IS NULL",
        )
        .bind(&lora)
        .bind(worker)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(from) = held else { return Ok(None) };
        let from = parse_status(&from)?;
        let Ok(to) = transition(from, StatusEvent::Requeue) else {
            return Ok(None);
        };
        if change_status(
            conn,
            &lora,
            from,
            to,
            StatusEvent::Requeue,
            &EventDetail::default(),
            &now,
        )
        .await?
        .is_none()
        {
            return Ok(None);
        }
        sqlx::query("UPDATE training_jobs SET attempt = max(attempt - 1, 0), start_failures = 0, next_attempt_at = NULL WHERE lora_id = $1")
            .bind(&lora)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE lora_models SET status_message = $1 WHERE id = $2")
            .bind(message)
            .bind(&lora)
            .execute(&mut *conn)
            .await?;
        Ok(Some(()))
    })?;
    Ok(done.is_some())
}

pub(super) async fn alerts(pool: &SqlitePool, limit: u32) -> Result<Vec<crate::Alert>> {
    let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT id, kind, subject, message, created_at FROM alerts ORDER BY id DESC LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, kind, subject, message, at)| {
            Ok(crate::Alert {
                id,
                kind,
                subject,
                message,
                created_at: super::rows::parse_ts(&at)?,
            })
        })
        .collect()
}

pub(super) async fn try_lease(
    repo: &SqliteRepository,
    name: &str,
    holder: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let (until, now) = (ts(until), ts(now));
    let taken = in_write_tx!(repo, |conn| async {
        let done = sqlx::query(
            "INSERT INTO maintenance_leases (name, holder, lease_until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until \
             WHERE maintenance_leases.holder = excluded.holder OR maintenance_leases.lease_until < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(&until)
        .bind(&now)
        .execute(&mut *conn)
        .await?;
        Ok(Some(done.rows_affected() == 1))
    })?;
    Ok(taken.unwrap_or(false))
}
