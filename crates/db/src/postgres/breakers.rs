//! Circuit breakers on Postgres: one row per backend, keyed failures, append-only transitions. The
//! decision is `domain::breaker::step`, applied inside one transaction holding the breaker's row
//! (`FOR UPDATE`), so replicas take turns and one of them wins a probe.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use loraforge_domain::breaker::{self, Breaker, BreakerEvent, BreakerRules};

use super::PgRepository;
use super::rows::ts;
use crate::common::{breaker_prune_before, breaker_window_start, parse_breaker_state, to_u32};
use crate::{BreakerStatus, BreakerStep, BreakerTransition, Result};

macro_rules! breaker_columns {
    () => {
        "backend, state, opened_at, probe_holder, probe_started_at, counted_from"
    };
}

fn opt_ts(row: &PgRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get(col)?)
}

fn breaker_row(row: &PgRow) -> Result<Breaker> {
    Ok(Breaker {
        backend: row.try_get("backend")?,
        state: parse_breaker_state(&row.try_get::<String, _>("state")?)?,
        opened_at: opt_ts(row, "opened_at")?,
        probe_holder: row.try_get("probe_holder")?,
        probe_started_at: opt_ts(row, "probe_started_at")?,
        counted_from: opt_ts(row, "counted_from")?,
    })
}

fn transition_row(row: &PgRow) -> Result<BreakerTransition> {
    Ok(BreakerTransition {
        id: row.try_get("id")?,
        backend: row.try_get("backend")?,
        from: parse_breaker_state(&row.try_get::<String, _>("from_state")?)?,
        to: parse_breaker_state(&row.try_get::<String, _>("to_state")?)?,
        reason: row.try_get("reason")?,
        forced_by: row.try_get("forced_by")?,
        at: row.try_get("at")?,
    })
}

async fn fetch_breaker(conn: &mut PgConnection, backend: &str) -> Result<Breaker> {
    let row = sqlx::query(concat!(
        "SELECT ",
        breaker_columns!(),
        " FROM backend_breakers WHERE backend = $1 FOR UPDATE"
    ))
    .bind(backend)
    .fetch_optional(&mut *conn)
    .await?;
    row.map_or_else(|| Ok(Breaker::closed(backend)), |r| breaker_row(&r))
}

async fn count_failures(
    conn: &mut PgConnection,
    b: &Breaker,
    rules: &BreakerRules,
    now: DateTime<Utc>,
) -> Result<u32> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM breaker_failures WHERE backend = $1 AND at >= $2 AND at <= $3",
    )
    .bind(&b.backend)
    .bind(ts(breaker_window_start(b, rules, now)))
    .bind(ts(now))
    .fetch_one(&mut *conn)
    .await?;
    to_u32(n, "failures")
}

pub(super) async fn step_breaker(
    repo: &PgRepository,
    backend: &str,
    event: &BreakerEvent,
    rules: &BreakerRules,
    now: DateTime<Utc>,
) -> Result<BreakerStep> {
    let mut tx = repo.write_tx().await?;
    let conn: &mut PgConnection = &mut tx;
    // The row must exist to be locked; a new one is closed.
    sqlx::query(
        "INSERT INTO backend_breakers (backend, state, updated_at) VALUES ($1, 'closed', $2) \
         ON CONFLICT (backend) DO NOTHING",
    )
    .bind(backend)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    let current = fetch_breaker(conn, backend).await?;
    let mut fresh_failure = false;
    if let BreakerEvent::Failure { key, reason } = event {
        sqlx::query("DELETE FROM breaker_failures WHERE backend = $1 AND at < $2")
            .bind(backend)
            .bind(ts(breaker_prune_before(rules, now)))
            .execute(&mut *conn)
            .await?;
        let done = sqlx::query(
            "INSERT INTO breaker_failures (backend, failure_key, reason, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (backend, failure_key) DO NOTHING",
        )
        .bind(backend)
        .bind(key)
        .bind(reason)
        .bind(ts(now))
        .execute(&mut *conn)
        .await?;
        fresh_failure = done.rows_affected() == 1;
    }
    let failures = count_failures(conn, &current, rules, now).await?;
    let is_failure = matches!(event, BreakerEvent::Failure { .. });
    let decided = if is_failure && !fresh_failure {
        None
    } else {
        breaker::step(&current, event, failures, rules, now)
    };
    let Some((next, transition)) = decided else {
        tx.commit().await?;
        return Ok(BreakerStep {
            breaker: current,
            changed: false,
            transition: None,
            failures_in_window: failures,
        });
    };
    sqlx::query(
        "INSERT INTO backend_breakers (backend, state, opened_at, probe_holder, probe_started_at, counted_from, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (backend) DO UPDATE SET state = excluded.state, \
         opened_at = excluded.opened_at, probe_holder = excluded.probe_holder, \
         probe_started_at = excluded.probe_started_at, counted_from = excluded.counted_from, updated_at = excluded.updated_at",
    )
    .bind(backend)
    .bind(next.state.as_str())
    .bind(next.opened_at.map(ts))
    .bind(&next.probe_holder)
    .bind(next.probe_started_at.map(ts))
    .bind(next.counted_from.map(ts))
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    let recorded = match transition {
        Some(t) => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO breaker_transitions (backend, from_state, to_state, reason, forced_by, at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(backend)
            .bind(t.from.as_str())
            .bind(t.to.as_str())
            .bind(&t.reason)
            .bind(&t.forced_by)
            .bind(ts(now))
            .fetch_one(&mut *conn)
            .await?;
            Some(BreakerTransition {
                id,
                backend: backend.to_owned(),
                from: t.from,
                to: t.to,
                reason: t.reason,
                forced_by: t.forced_by,
                at: crate::common::micros(now),
            })
        }
        None => None,
    };
    let failures = count_failures(conn, &next, rules, now).await?;
    tx.commit().await?;
    Ok(BreakerStep {
        breaker: next,
        changed: true,
        transition: recorded,
        failures_in_window: failures,
    })
}

pub(super) async fn breakers(
    pool: &PgPool,
    rules: &BreakerRules,
    now: DateTime<Utc>,
) -> Result<Vec<BreakerStatus>> {
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query(concat!(
        "SELECT ",
        breaker_columns!(),
        " FROM backend_breakers ORDER BY backend"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let breaker = breaker_row(row)?;
        let failures_in_window = count_failures(&mut conn, &breaker, rules, now).await?;
        out.push(BreakerStatus {
            breaker,
            failures_in_window,
        });
    }
    Ok(out)
}

pub(super) async fn breaker_transitions(
    pool: &PgPool,
    backend: Option<&str>,
    limit: u32,
) -> Result<Vec<BreakerTransition>> {
    let rows = sqlx::query(
        "SELECT id, backend, from_state, to_state, reason, forced_by, at FROM breaker_transitions \
         WHERE $1::text IS NULL OR backend = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(backend)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(transition_row).collect()
}
