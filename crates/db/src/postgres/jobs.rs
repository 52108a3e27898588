//! Status changes, progress, the event log and the job queue on Postgres.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use loraforge_domain::status::transition;
use loraforge_domain::{LoraId, LoraModel, Progress, StatusEvent, TrainingStatus};

use super::PgRepository;
use super::library::lock_user;
use super::rows::{event, fetch_written, insert_event, status_names, ts};
use crate::common::{CAS_ATTEMPTS, parse_status, progress_data, status_data, to_u32};
use crate::{
    ClaimedJob, DbError, EventDetail, ExpiredLease, JobClaim, LoraEvent, Result, RunningJob,
    StartDue,
};

pub(super) async fn apply_event(
    repo: &PgRepository,
    id: LoraId,
    event: StatusEvent,
    detail: EventDetail,
    now: DateTime<Utc>,
) -> Result<LoraModel> {
    let id = id.as_uuid();
    let now = ts(now);
    for _ in 0..CAS_ATTEMPTS {
        let applied = in_write_tx!(repo, |conn| async {
            let from: Option<String> =
                sqlx::query_scalar("SELECT training_status FROM lora_models WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            let from = parse_status(&from.ok_or(DbError::NotFound)?)?;
            let to = transition(from, event)?;
            change_status(conn, id, from, to, event, &detail, now).await
        })?;
        if let Some(lora) = applied {
            return Ok(lora);
        }
        // Lost the race: someone changed the status between our read and our write. Re-read.
    }
    Err(DbError::Conflict)
}

/// Compare-and-set of `from` → `to` with its side effects on the job row and the event log.
/// `Ok(None)` when the status was no longer `from`.
pub(super) async fn change_status(
    conn: &mut PgConnection,
    id: Uuid,
    from: TrainingStatus,
    to: TrainingStatus,
    event: StatusEvent,
    detail: &EventDetail,
    now: DateTime<Utc>,
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
        sqlx::query(
            "UPDATE lora_models SET storage_key = $1, file_size = $2, validation_image_keys = $3, \
             sha256 = $4 WHERE id = $5",
        )
        .bind(&files.storage_key)
        .bind(i64::try_from(files.file_size).unwrap_or(i64::MAX))
        .bind(sqlx::types::Json(&files.validation_image_keys))
        .bind(&files.sha256)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(scores) = &detail.validation_scores {
        sqlx::query("UPDATE lora_models SET validation_scores = $1 WHERE id = $2")
            .bind(sqlx::types::Json(scores))
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
    repo: &PgRepository,
    id: LoraId,
    progress: &Progress,
    now: DateTime<Utc>,
) -> Result<()> {
    let id = id.as_uuid();
    let now = ts(now);
    let recorded = in_write_tx!(repo, |conn| async {
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE lora_models SET stage = $1, progress = $2, estimated_remaining = $3, updated_at = $4 \
             WHERE id = $5 RETURNING training_status",
        )
        .bind(&progress.stage)
        .bind(i32::from(progress.percent.min(100)))
        .bind(progress.estimated_remaining.map(|s| i32::try_from(s).unwrap_or(i32::MAX)))
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(status) = status else {
            return Ok(None);
        };
        sqlx::query("UPDATE training_jobs SET heartbeat_at = $1 WHERE lora_id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        insert_event(
            conn,
            id,
            "progress",
            parse_status(&status)?,
            &progress_data(progress),
            now,
        )
        .await?;
        Ok(Some(()))
    })?;
    recorded.ok_or(DbError::NotFound)
}

pub(super) async fn events_after(
    pool: &PgPool,
    id: LoraId,
    after: i64,
    limit: u32,
) -> Result<Vec<LoraEvent>> {
    let rows = sqlx::query(
        "SELECT id, lora_id, kind, status, data, at FROM lora_events WHERE lora_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(id.as_uuid())
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(event).collect()
}

/// Attempts before `claim_next_job` answers "nothing claimable" after losing every race.
const CLAIM_ATTEMPTS: usize = 8;

pub(super) async fn claim_next_job(
    repo: &PgRepository,
    worker: &str,
    max_active_per_user: u32,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<ClaimedJob>> {
    let now = ts(now);
    let lease_until = ts(lease_until);
    let active = status_names(&TrainingStatus::ACTIVE);
    for _ in 0..CLAIM_ATTEMPTS {
        let mut tx = repo.write_tx().await?;
        let attempt = try_claim(
            &mut tx,
            worker,
            max_active_per_user,
            &active,
            lease_until,
            now,
        )
        .await;
        match attempt {
            Ok(Claim::Claimed(job)) => {
                tx.commit().await?;
                return Ok(Some(*job));
            }
            Ok(Claim::Empty) => {
                super::rollback(tx).await;
                return Ok(None);
            }
            Ok(Claim::Retry) => super::rollback(tx).await,
            Err(e) => {
                super::rollback(tx).await;
                return Err(e);
            }
        }
    }
    Ok(None)
}

enum Claim {
    Claimed(Box<ClaimedJob>),
    /// No queued job whose owner has a free slot.
    Empty,
    /// Another claimer got there first (the owner's last slot, or the job itself).
    Retry,
}

async fn try_claim(
    conn: &mut PgConnection,
    worker: &str,
    max_active: u32,
    active: &[String],
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Claim> {
    let max_active = i64::from(max_active);
    // SKIP LOCKED: concurrent claimers each take a different candidate instead of queueing up.
    let candidate: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT m.id, m.user_id FROM lora_models m WHERE m.training_status = $1 \
         AND (SELECT count(*) FROM lora_models a WHERE a.user_id = m.user_id AND a.training_status = ANY($2)) < $3 \
         AND NOT EXISTS (SELECT 1 FROM training_runs r WHERE r.lora_id = m.id AND r.instance_gone_at IS NULL) \
         ORDER BY m.created_at, m.id LIMIT 1 FOR UPDATE OF m SKIP LOCKED",
    )
    .bind(TrainingStatus::Queued.as_str())
    .bind(active)
    .bind(max_active)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, user)) = candidate else {
        return Ok(Claim::Empty);
    };

    // The count above may predate another claimer's commit for the same user: recount under the
    // user's lock, which every claim of that user takes.
    lock_user(conn, user, now).await?;
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lora_models WHERE user_id = $1 AND training_status = ANY($2)",
    )
    .bind(user)
    .bind(active)
    .fetch_one(&mut *conn)
    .await?;
    if running >= max_active {
        return Ok(Claim::Retry);
    }

    let from = TrainingStatus::Queued;
    let to = transition(from, StatusEvent::Start)?;
    let changed = sqlx::query(
        "UPDATE lora_models SET training_status = $1, stage = NULL, progress = 0, estimated_remaining = NULL, \
         error = NULL, status_message = NULL, updated_at = $2 WHERE id = $3 AND training_status = $4",
    )
    .bind(to.as_str())
    .bind(now)
    .bind(id)
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?;
    if changed.rows_affected() == 0 {
        return Ok(Claim::Retry);
    }
    let attempt: i32 = sqlx::query_scalar(
        "UPDATE training_jobs SET worker = $1, lease_until = $2, heartbeat_at = $3, started_at = $3, \
         finished_at = NULL, attempt = attempt + 1, run_id = NULL, \
         start_failures = 0, next_attempt_at = NULL, last_error = NULL WHERE lora_id = $4 RETURNING attempt",
    )
    .bind(worker)
    .bind(lease_until)
    .bind(now)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    insert_event(
        conn,
        id,
        "status",
        to,
        &status_data(from, to, StatusEvent::Start, None),
        now,
    )
    .await?;
    let lora = fetch_written(conn, id).await?;
    Ok(Claim::Claimed(Box::new(ClaimedJob {
        lora,
        worker: worker.to_owned(),
        lease_until,
        attempt: to_u32(i64::from(attempt), "attempt")?,
    })))
}

// --- the job engine: leases and runs (no status changes here) -----------------------------------

pub(super) async fn heartbeat(
    pool: &PgPool,
    id: LoraId,
    worker: &str,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool> {
    // One statement: the row lock makes the check of the holder and the extension atomic
    // against a concurrent requeue or claim.
    let done = sqlx::query(
        "UPDATE training_jobs SET lease_until = $1, heartbeat_at = $2 \
         WHERE lora_id = $3 AND worker = $4 AND lease_until IS NOT NULL",
    )
    .bind(ts(lease_until))
    .bind(ts(now))
    .bind(id.as_uuid())
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn expired_leases(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<ExpiredLease>> {
    let rows: Vec<(Uuid, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT j.lora_id, j.attempt, j.lease_until FROM training_jobs j JOIN lora_models m ON m.id = j.lora_id \
         WHERE m.training_status = $1 AND j.lease_until < $2 ORDER BY j.lease_until, j.lora_id",
    )
    .bind(TrainingStatus::Training.as_str())
    .bind(ts(now))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, attempt, lease_until)| {
            Ok(ExpiredLease {
                lora_id: id.into(),
                attempt: to_u32(i64::from(attempt), "attempt")?,
                lease_until,
            })
        })
        .collect()
}

pub(super) async fn jobs_running_longer_than(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
) -> Result<Vec<RunningJob>> {
    let rows: Vec<(Uuid, DateTime<Utc>, i32)> = sqlx::query_as(
        "SELECT j.lora_id, j.started_at, j.attempt FROM training_jobs j JOIN lora_models m ON m.id = j.lora_id \
         WHERE m.training_status = $1 AND j.started_at < $2 ORDER BY j.started_at, j.lora_id",
    )
    .bind(TrainingStatus::Training.as_str())
    .bind(ts(cutoff))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, started_at, attempt)| {
            Ok(RunningJob {
                lora_id: id.into(),
                started_at,
                attempt: to_u32(i64::from(attempt), "attempt")?,
            })
        })
        .collect()
}

pub(super) async fn job_claim(pool: &PgPool, id: LoraId) -> Result<Option<JobClaim>> {
    type Row = (
        Option<String>,
        i32,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<i64>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT worker, attempt, lease_until, checkpoint_key, checkpoint_step FROM training_jobs WHERE lora_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?;
    row.map(|(worker, attempt, lease_until, key, step)| {
        Ok(JobClaim {
            worker,
            attempt: to_u32(i64::from(attempt), "attempt")?,
            lease_until,
            checkpoint: match (key, step) {
                (Some(k), Some(s)) => Some((k, crate::common::to_u64(s, "checkpoint_step")?)),
                _ => None,
            },
        })
    })
    .transpose()
}

pub(super) async fn record_checkpoint(
    pool: &PgPool,
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
    .bind(id.as_uuid())
    .bind(worker)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn pending_ids(pool: &PgPool, limit: u32) -> Result<Vec<LoraId>> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM lora_models WHERE training_status = $1 ORDER BY created_at, id LIMIT $2",
    )
    .bind(TrainingStatus::Pending.as_str())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().map(LoraId::from).collect())
}

pub(super) async fn record_start_failure(
    pool: &PgPool,
    id: LoraId,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> Result<u32> {
    let failures: Option<i32> = sqlx::query_scalar(
        "UPDATE training_jobs SET start_failures = start_failures + 1, last_error = $1, next_attempt_at = $2 \
         WHERE lora_id = $3 RETURNING start_failures",
    )
    .bind(error)
    .bind(ts(next_attempt_at))
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?;
    to_u32(
        i64::from(failures.ok_or(DbError::NotFound)?),
        "start_failures",
    )
}

pub(super) async fn starts_due(
    pool: &PgPool,
    worker: &str,
    now: DateTime<Utc>,
) -> Result<Vec<StartDue>> {
    let rows: Vec<(Uuid, i32, i32)> = sqlx::query_as(
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
                lora_id: id.into(),
                attempt: to_u32(i64::from(attempt), "attempt")?,
                start_failures: to_u32(i64::from(failures), "start_failures")?,
            })
        })
        .collect()
}
