//! Status changes, progress, the event log and the job queue on SQLite.

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use loraforge_domain::status::transition;
use loraforge_domain::{LoraId, LoraModel, Progress, StatusEvent, TrainingStatus};

use super::SqliteRepository;
use super::rows::{event, fetch_written, insert_event, ts};
use crate::common::{CAS_ATTEMPTS, parse_status, progress_data, status_data, to_u32};
use crate::{
    ClaimedJob, DbError, EventDetail, ExpiredLease, JobClaim, LoraEvent, Result, RunningJob,
    StartDue,
};

pub(super) async fn apply_event(
    repo: &SqliteRepository,
    id: LoraId,
    event: StatusEvent,
    detail: EventDetail,
    now: DateTime<Utc>,
) -> Result<LoraModel> {
    let id = id.to_string();
    let now = ts(now);
    // Under BEGIN IMMEDIATE nobody else writes between the read and the compare-and-set, so the
    // retry is only a guard; it matters for engines with concurrent writers.
    for _ in 0..CAS_ATTEMPTS {
        let applied = in_write_tx!(repo, |conn| async {
            let from: Option<String> =
                sqlx::query_scalar("SELECT training_status FROM lora_models WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&mut *conn)
                    .await?;
            let from = parse_status(&from.ok_or(DbError::NotFound)?)?;
            let to = transition(from, event)?;
            change_status(conn, &id, from, to, event, &detail, &now).await
        })?;
        if let Some(lora) = applied {
            return Ok(lora);
        }
    }
    Err(DbError::Conflict)
}

/// Compare-and-set of `from` → `to` with its side effects on the job row and the event log.
/// `Ok(None)` when the status was no longer `from`.
pub(super) async fn change_status(
    conn: &mut SqliteConnection,
    id: &str,
    from: TrainingStatus,
    to: TrainingStatus,
    event: StatusEvent,
    detail: &EventDetail,
    now: &str,
) -> Result<Option<LoraModel>> {
    let error = detail.error.as_deref();
    let completed_at = (to == TrainingStatus::Completed).then_some(now);
    let changed = sqlx::query(
        "UPDATE lora_models SET training_status = $1, error = $2, updated_at = $3, \
         completed_at = coalesce($4, completed_at) WHERE id = $5 AND training_status = $6",
    )
    .bind(to.as_str())
    .bind(error)
    .bind(now)
    .bind(completed_at)
    .bind(id)
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?;
    if changed.rows_affected() == 0 {
        return Ok(None);
    }
    if let Some(files) = &detail.outputs {
        let keys = serde_json::to_string(&files.validation_image_keys)
            .map_err(|e| DbError::Corrupt(e.to_string()))?;
        sqlx::query(
            "UPDATE lora_models SET storage_key = $1, file_size = $2, validation_image_keys = $3, \
             sha256 = $4 WHERE id = $5",
        )
        .bind(&files.storage_key)
        .bind(i64::try_from(files.file_size).unwrap_or(i64::MAX))
        .bind(keys)
        .bind(&files.sha256)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(scores) = &detail.validation_scores {
        let scores = serde_json::to_string(scores).map_err(|e| DbError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE lora_models SET validation_scores = $1 WHERE id = $2")
            .bind(scores)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(passed) = detail.validation_passed {
        sqlx::query("UPDATE lora_models SET validation_passed = $1 WHERE id = $2")
            .bind(passed)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    if to.is_final() {
        sqlx::query(
            "UPDATE training_jobs SET finished_at = $1, lease_until = NULL WHERE lora_id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    } else if to == TrainingStatus::Queued {
        // Back in the queue: the previous run's lease is void.
        sqlx::query("UPDATE training_jobs SET worker = NULL, lease_until = NULL, run_id = NULL WHERE lora_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    insert_event(
        conn,
        id,
        "status",
        to,
        &status_data(from, to, event, error),
        now,
    )
    .await?;
    Ok(Some(fetch_written(conn, id).await?))
}

pub(super) async fn record_progress(
    repo: &SqliteRepository,
    id: LoraId,
    progress: &Progress,
    now: DateTime<Utc>,
) -> Result<()> {
    let id = id.to_string();
    let now = ts(now);
    let recorded = in_write_tx!(repo, |conn| async {
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE lora_models SET stage = $1, progress = $2, estimated_remaining = $3, updated_at = $4 \
             WHERE id = $5 RETURNING training_status",
        )
        .bind(&progress.stage)
        .bind(i64::from(progress.percent.min(100)))
        .bind(progress.estimated_remaining.map(i64::from))
        .bind(&now)
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(status) = status else {
            return Ok(None);
        };
        sqlx::query("UPDATE training_jobs SET heartbeat_at = $1 WHERE lora_id = $2")
            .bind(&now)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        insert_event(
            conn,
            &id,
            "progress",
            parse_status(&status)?,
            &progress_data(progress),
            &now,
        )
        .await?;
        Ok(Some(()))
    })?;
    recorded.ok_or(DbError::NotFound)
}

pub(super) async fn events_after(
    pool: &SqlitePool,
    id: LoraId,
    after: i64,
    limit: u32,
) -> Result<Vec<LoraEvent>> {
    let rows = sqlx::query(
        "SELECT id, lora_id, kind, status, data, at FROM lora_events WHERE lora_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(id.to_string())
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(event).collect()
}

pub(super) async fn claim_next_job(
    repo: &SqliteRepository,
    worker: &str,
    max_active_per_user: u32,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<ClaimedJob>> {
    let now_s = ts(now);
    let lease_s = ts(lease_until);
    in_write_tx!(repo, |conn| async {
        // The write lock is held, so the count and the claim below see the same queue.
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT m.id FROM lora_models m WHERE m.training_status = ",
        );
        qb.push_bind(TrainingStatus::Queued.as_str())
            .push(" AND (SELECT count(*) FROM lora_models a WHERE a.user_id = m.user_id AND a.training_status IN (");
        let mut list = qb.separated(", ");
        for s in TrainingStatus::ACTIVE {
            list.push_bind(s.as_str());
        }
        qb.push(")) < ").push_bind(i64::from(max_active_per_user));
        // A job is never claimed while an earlier instance of it may still run.
        qb.push(
            " AND NOT EXISTS (SELECT 1 FROM training_runs r WHERE r.lora_id = m.id AND r.instance_gone_at IS NULL) \
             ORDER BY m.created_at, m.id LIMIT 1",
        );
        let candidate: Option<String> = qb.build_query_scalar().fetch_optional(&mut *conn).await?;
        let Some(id) = candidate else { return Ok(None) };

        let from = TrainingStatus::Queued;
        let to = transition(from, StatusEvent::Start)?;
        let changed = sqlx::query(
            "UPDATE lora_models SET training_status = $1, stage = NULL, progress = 0, estimated_remaining = NULL, \
             error = NULL, status_message = NULL, updated_at = $2 WHERE id = $3 AND training_status = $4",
        )
        .bind(to.as_str())
        .bind(&now_s)
        .bind(&id)
        .bind(from.as_str())
        .execute(&mut *conn)
        .await?;
        if changed.rows_affected() == 0 {
            return Err(DbError::Conflict);
        }
        let attempt: i64 = sqlx::query_scalar(
            "UPDATE training_jobs SET worker = $1, lease_until = $2, heartbeat_at = $3, started_at = $3, \
             finished_at = NULL, attempt = attempt + 1, run_id = NULL, \
         start_failures = 0, next_attempt_at = NULL, last_error = NULL WHERE lora_id = $4 RETURNING attempt",
        )
        .bind(worker)
        .bind(&lease_s)
        .bind(&now_s)
        .bind(&id)
        .fetch_one(&mut *conn)
        .await?;
        insert_event(
            conn,
            &id,
            "status",
            to,
            &status_data(from, to, StatusEvent::Start, None),
            &now_s,
        )
        .await?;
        let lora = fetch_written(conn, &id).await?;
        Ok(Some(ClaimedJob {
            lora,
            worker: worker.to_owned(),
            lease_until: super::rows::parse_ts(&lease_s)?,
            attempt: to_u32(attempt, "attempt")?,
        }))
    })
}

// --- the job engine: leases and runs (no status changes here) -----------------------------------

pub(super) async fn heartbeat(
    pool: &SqlitePool,
    id: LoraId,
    worker: &str,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool> {
    // One statement: the check of the holder and the extension are atomic.
    let done = sqlx::query(
        "UPDATE training_jobs SET lease_until = $1, heartbeat_at = $2 \
         WHERE lora_id = $3 AND worker = $4 AND lease_until IS NOT NULL",
    )
    .bind(ts(lease_until))
    .bind(ts(now))
    .bind(id.to_string())
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn expired_leases(
    pool: &SqlitePool,
    now: DateTime<Utc>,
) -> Result<Vec<ExpiredLease>> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT j.lora_id, j.attempt, j.lease_until FROM training_jobs j JOIN lora_models m ON m.id = j.lora_id \
         WHERE m.training_status = $1 AND j.lease_until < $2 ORDER BY j.lease_until, j.lora_id",
    )
    .bind(TrainingStatus::Training.as_str())
    .bind(ts(now))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, attempt, lease)| {
            Ok(ExpiredLease {
                lora_id: lora_id(&id)?,
                attempt: to_u32(attempt, "attempt")?,
                lease_until: super::rows::parse_ts(&lease)?,
            })
        })
        .collect()
}

pub(super) async fn jobs_running_longer_than(
    pool: &SqlitePool,
    cutoff: DateTime<Utc>,
) -> Result<Vec<RunningJob>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT j.lora_id, j.started_at, j.attempt FROM training_jobs j JOIN lora_models m ON m.id = j.lora_id \
         WHERE m.training_status = $1 AND j.started_at < $2 ORDER BY j.started_at, j.lora_id",
    )
    .bind(TrainingStatus::Training.as_str())
    .bind(ts(cutoff))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, started, attempt)| {
            Ok(RunningJob {
                lora_id: lora_id(&id)?,
                started_at: super::rows::parse_ts(&started)?,
                attempt: to_u32(attempt, "attempt")?,
            })
        })
        .collect()
}

pub(super) async fn job_claim(pool: &SqlitePool, id: LoraId) -> Result<Option<JobClaim>> {
    type Row = (
        Option<String>,
        i64,
        Option<String>,
        Option<String>,
        Option<i64>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT worker, attempt, lease_until, checkpoint_key, checkpoint_step FROM training_jobs WHERE lora_id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    row.map(|(worker, attempt, lease, key, step)| {
        Ok(JobClaim {
            worker,
            attempt: to_u32(attempt, "attempt")?,
            lease_until: lease.as_deref().map(super::rows::parse_ts).transpose()?,
            checkpoint: match (key, step) {
                (Some(k), Some(s)) => Some((k, crate::common::to_u64(s, "checkpoint_step")?)),
                _ => None,
            },
        })
    })
    .transpose()
}

pub(super) async fn record_checkpoint(
    pool: &SqlitePool,
    id: LoraId,
    worker: &str,
    attempt: u32,
    key: &str,
    step: u64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE training_jobs SET checkpoint_key = $1, checkpoint_step = $2 \
         WHERE lora_id = $3 AND worker = $4 AND attempt = $5 AND lease_until IS NOT NULL",
    )
    .bind(key)
    .bind(crate::common::to_i64(step, "checkpoint_step")?)
    .bind(id.to_string())
    .bind(worker)
    .bind(i64::from(attempt))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn pending_ids(pool: &SqlitePool, limit: u32) -> Result<Vec<LoraId>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM lora_models WHERE training_status = $1 ORDER BY created_at, id LIMIT $2",
    )
    .bind(TrainingStatus::Pending.as_str())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    ids.iter().map(|id| lora_id(id)).collect()
}

pub(super) async fn record_start_failure(
    pool: &SqlitePool,
    id: LoraId,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> Result<u32> {
    let failures: Option<i64> = sqlx::query_scalar(
        "UPDATE training_jobs SET start_failures = start_failures + 1, last_error = $1, next_attempt_at = $2 \
         WHERE lora_id = $3 RETURNING start_failures",
    )
    .bind(error)
    .bind(ts(next_attempt_at))
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    to_u32(failures.ok_or(DbError::NotFound)?, "start_failures")
}

pub(super) async fn starts_due(
    pool: &SqlitePool,
    worker: &str,
    now: DateTime<Utc>,
) -> Result<Vec<StartDue>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT j.lora_id, j.attempt, j.start_failures FROM training_jobs j JOIN lora_models m ON m.id = j.lora_id \
         WHERE m.training_status = $1 AND j.worker = $2 AND j.run_id IS NULL AND j.lease_until IS NOT NULL \
         AND j.next_attempt_at IS NOT NULL AND j.next_attempt_at <= $3 ORDER BY j.next_attempt_at, j.lora_id",
    )
    .bind(TrainingStatus::Training.as_str())
    .bind(worker)
    .bind(ts(now))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, attempt, failures)| {
            Ok(StartDue {
                lora_id: lora_id(&id)?,
                attempt: to_u32(attempt, "attempt")?,
                start_failures: to_u32(failures, "start_failures")?,
            })
        })
        .collect()
}

fn lora_id(s: &str) -> Result<LoraId> {
    s.parse()
        .map_err(|e| crate::common::corrupt(format!("lora id {s:?}: {e}")))
}
