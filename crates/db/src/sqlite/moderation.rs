//! [`ModerationStore`] on SQLite: every write runs under the write lock (`BEGIN IMMEDIATE`), so
//! the one-open-report check and the insert, or a hide and the resolving of its reports, cannot
//! interleave with another writer. The partial unique index `lora_reports_one_open` backs the
//! check.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use loraforge_domain::{CreatorRef, LoraId, LoraModel, Resolution, UserId};

use super::SqliteRepository;
use super::rows::{fetch_lora, fetch_written, hidden_record, parse_ts, ts};
use crate::common::{corrupt, to_u32, to_u64};
use crate::moderation::{
    DISMISS_REPORT, Filed, HideOutcome, ModerationStore, NewReport, OPEN_REPORTS_OF,
    REPORT_COLUMNS, RESOLVE_OPEN_REPORTS, Report, ReportQuery, ReportRecord, ReportRow,
    UNHIDE_LORA, count_reports_sql, list_reports_sql,
};
use crate::{DbError, Page, Result};

fn uuid(row: &SqliteRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| corrupt(format!("{col} {s:?}: {e}")))
}

fn opt_ts(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    row.try_get::<Option<String>, _>(col)?
        .map(|s| parse_ts(&s))
        .transpose()
}

fn report_row(row: &SqliteRow) -> Result<Report> {
    let resolved_by: Option<String> = row.try_get("resolved_by")?;
    ReportRecord {
        id: row.try_get("id")?,
        lora_id: uuid(row, "lora_id")?,
        reporter: uuid(row, "reporter_id")?,
        reason: row.try_get("reason")?,
        details: row.try_get("details")?,
        created_at: parse_ts(&row.try_get::<String, _>("created_at")?)?,
        resolved_at: opt_ts(row, "resolved_at")?,
        resolved_by: resolved_by
            .map(|s| Uuid::parse_str(&s).map_err(|e| corrupt(format!("resolved_by {s:?}: {e}"))))
            .transpose()?,
        resolution: row.try_get("resolution")?,
    }
    .into_report()
}

async fn fetch_report(conn: &mut SqliteConnection, id: i64) -> Result<Option<Report>> {
    // Only constants are formatted in.
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REPORT_COLUMNS} FROM lora_reports r WHERE r.id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(report_row).transpose()
}

async fn open_reports_of(conn: &mut SqliteConnection, lora: &str) -> Result<u32> {
    let n: i64 = sqlx::query_scalar(OPEN_REPORTS_OF)
        .bind(lora)
        .fetch_one(&mut *conn)
        .await?;
    to_u32(n, "count")
}

async fn file_in_tx(conn: &mut SqliteConnection, new: &NewReport) -> Result<Filed> {
    let lora = new.lora_id.to_string();
    let reporter = new.reporter.to_string();
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM lora_models WHERE id = $1")
        .bind(&lora)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Err(DbError::NotFound);
    }
    let open: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM lora_reports WHERE lora_id = $1 AND reporter_id = $2 AND resolved_at IS NULL",
    )
    .bind(&lora)
    .bind(&reporter)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = open {
        let report = fetch_report(conn, id)
            .await?
            .ok_or_else(|| corrupt(format!("report {id} vanished inside its transaction")))?;
        return Ok(Filed::AlreadyOpen(report));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO lora_reports (lora_id, reporter_id, reason, details, created_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(&lora)
    .bind(&reporter)
    .bind(new.reason.as_str())
    .bind(&new.details)
    .bind(ts(new.now))
    .fetch_one(&mut *conn)
    .await?;
    let report = fetch_report(conn, id)
        .await?
        .ok_or_else(|| corrupt(format!("report {id} vanished inside its transaction")))?;
    let open_reports = open_reports_of(conn, &lora).await?;
    Ok(Filed::Created {
        report,
        open_reports,
    })
}

async fn hide_in_tx(
    conn: &mut SqliteConnection,
    id: &str,
    reason: &str,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<Option<HideOutcome>> {
    let Some(before) = fetch_lora(conn, id).await? else {
        return Ok(None);
    };
    let now = ts(now);
    let by = by.to_string();
    let newly_hidden = !before.is_hidden();
    if newly_hidden {
        sqlx::query(
            "UPDATE lora_models SET hidden_at = $1, hidden_reason = $2, hidden_by = $3 \
             WHERE id = $4 AND hidden_at IS NULL",
        )
        .bind(&now)
        .bind(reason)
        .bind(&by)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    let resolved = sqlx::query(RESOLVE_OPEN_REPORTS)
        .bind(&now)
        .bind(&by)
        .bind(Resolution::Hidden.as_str())
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(Some(HideOutcome {
        lora: fetch_written(conn, id).await?,
        newly_hidden,
        resolved_reports: u32::try_from(resolved).unwrap_or(u32::MAX),
    }))
}

#[async_trait]
impl ModerationStore for SqliteRepository {
    async fn file_report(&self, new: &NewReport) -> Result<Filed> {
        let filed = in_write_tx!(self, |conn| async { file_in_tx(conn, new).await.map(Some) })?;
        filed.ok_or_else(|| corrupt("file_report produced no outcome"))
    }

    async fn get_report(&self, id: i64) -> Result<Option<Report>> {
        let mut conn = self.pool.acquire().await?;
        fetch_report(&mut conn, id).await
    }

    async fn list_reports(&self, query: &ReportQuery) -> Result<Page<ReportRow>> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(list_reports_sql(query.state)))
            .bind(i64::from(query.limit))
            .bind(i64::try_from(query.offset).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await?;
        let items = rows
            .iter()
            .map(|row| {
                Ok(ReportRow {
                    report: report_row(row)?,
                    lora_name: row.try_get("lora_name")?,
                    creator: CreatorRef {
                        id: uuid(row, "user_id")?.into(),
                        email: row.try_get("email")?,
                        display_name: row.try_get("display_name")?,
                    },
                    hidden: hidden_record(row)?.into_hidden(),
                    open_reports_of_lora: to_u32(row.try_get("open_reports")?, "open_reports")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count_reports_sql(query.state)))
            .fetch_one(&mut *conn)
            .await?;
        Ok(Page {
            items,
            total: to_u64(total, "count")?,
            total_exact: true,
        })
    }

    async fn hide_lora(
        &self,
        id: LoraId,
        reason: &str,
        by: UserId,
        now: DateTime<Utc>,
    ) -> Result<HideOutcome> {
        let id = id.to_string();
        let outcome = in_write_tx!(self, |conn| async {
            hide_in_tx(conn, &id, reason, by, now).await
        })?;
        outcome.ok_or(DbError::NotFound)
    }

    async fn unhide_lora(&self, id: LoraId) -> Result<LoraModel> {
        let id = id.to_string();
        let lora = in_write_tx!(self, |conn| async {
            sqlx::query(UNHIDE_LORA)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            fetch_lora(conn, &id).await
        })?;
        lora.ok_or(DbError::NotFound)
    }

    async fn dismiss_report(&self, id: i64, by: UserId, now: DateTime<Utc>) -> Result<Report> {
        let report = in_write_tx!(self, |conn| async {
            sqlx::query(DISMISS_REPORT)
                .bind(ts(now))
                .bind(by.to_string())
                .bind(Resolution::Dismissed.as_str())
                .bind(id)
                .execute(&mut *conn)
                .await?;
            fetch_report(conn, id).await
        })?;
        report.ok_or(DbError::NotFound)
    }
}
