//! SQLite's encodings: TEXT uuids and TEXT timestamps with six fractional digits, decoded into the
//! shared records of `crate::common`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use loraforge_domain::{LoraModel, TrainingStatus};

use crate::common::{
    HiddenRecord, LoraRecord, RunRecord, SummaryRecord, corrupt, micros, parse_status,
};
use crate::{LoraEvent, Result};

/// A timestamp as stored: UTC, RFC 3339, always six fractional digits, so that comparing the
/// text compares the instants.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    micros(t).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

pub(super) fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(format!("timestamp {s:?}: {e}")))
}

fn uuid(row: &SqliteRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| corrupt(format!("{col} {s:?}: {e}")))
}

fn time(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>> {
    parse_ts(&row.try_get::<String, _>(col)?)
}

fn opt_time(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    row.try_get::<Option<String>, _>(col)?
        .as_deref()
        .map(parse_ts)
        .transpose()
}

fn json(row: &SqliteRow, col: &str) -> Result<Value> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).map_err(|e| corrupt(format!("{col}: {e}")))
}

/// Decodes a row of `lora_select!()`.
pub(super) fn lora_record(row: &SqliteRow) -> Result<LoraRecord> {
    Ok(LoraRecord {
        id: uuid(row, "id")?,
        user_id: uuid(row, "user_id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        dataset_id: uuid(row, "dataset_id")?,
        params: json(row, "params")?,
        status: row.try_get("training_status")?,
        stage: row.try_get("stage")?,
        progress: row.try_get("progress")?,
        estimated_remaining: row.try_get("estimated_remaining")?,
        error: row.try_get("error")?,
        usage_count: row.try_get("usage_count")?,
        storage_key: row.try_get("storage_key")?,
        file_size: row.try_get("file_size")?,
        validation_image_keys: json(row, "validation_image_keys")?,
        validation_passed: row.try_get("validation_passed")?,
        validation_scores: row
            .try_get::<Option<String>, _>("validation_scores")?
            .map(|s| {
                serde_json::from_str(&s).map_err(|e| corrupt(format!("validation_scores: {e}")))
            })
            .transpose()?,
        training_cost_micros: row.try_get("training_cost_micros")?,
        status_message: row.try_get("status_message")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        completed_at: opt_time(row, "completed_at")?,
        character_id: row.try_get("character_id")?,
        triggered_by_job_id: row.try_get("triggered_by_job_id")?,
        sha256: row.try_get("sha256")?,
        file_missing_since: opt_time(row, "file_missing_since")?,
        hidden: hidden_record(row)?,
    })
}

/// Decodes the moderation columns (`hidden_at`, `hidden_reason`, `hidden_by`) of a row.
pub(super) fn hidden_record(row: &SqliteRow) -> Result<HiddenRecord> {
    let by: Option<String> = row.try_get("hidden_by")?;
    Ok(HiddenRecord {
        at: opt_time(row, "hidden_at")?,
        reason: row.try_get("hidden_reason")?,
        by: by
            .map(|s| Uuid::parse_str(&s).map_err(|e| corrupt(format!("hidden_by {s:?}: {e}"))))
            .transpose()?,
    })
}

/// Decodes a library listing row (id, user_id, email, name, description, training_status,
/// usage_count, created_at).
pub(super) fn summary_record(row: &SqliteRow) -> Result<SummaryRecord> {
    Ok(SummaryRecord {
        id: uuid(row, "id")?,
        user_id: uuid(row, "user_id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        status: row.try_get("training_status")?,
        usage_count: row.try_get("usage_count")?,
        created_at: time(row, "created_at")?,
        character_id: row.try_get("character_id")?,
        triggered_by_job_id: row.try_get("triggered_by_job_id")?,
        hidden: hidden_record(row)?,
    })
}

/// Decodes a `training_runs` row (every column).
pub(super) fn run_record(row: &SqliteRow) -> Result<RunRecord> {
    let result: Option<String> = row.try_get("result")?;
    Ok(RunRecord {
        id: uuid(row, "id")?,
        lora_id: uuid(row, "lora_id")?,
        attempt: row.try_get("attempt")?,
        backend: row.try_get("backend")?,
        engine: row.try_get("engine")?,
        instance_name: row.try_get("instance_name")?,
        provider_id: row.try_get("provider_id")?,
        gpu_type: row.try_get("gpu_type")?,
        price_per_hour_micros: row.try_get("price_per_hour_micros")?,
        created_at: time(row, "created_at")?,
        started_at: time(row, "started_at")?,
        ended_at: opt_time(row, "ended_at")?,
        outcome: row.try_get("outcome")?,
        reason: row.try_get("reason")?,
        result: result
            .map(|r| serde_json::from_str(&r).map_err(|e| corrupt(format!("result: {e}"))))
            .transpose()?,
        settled_at: opt_time(row, "settled_at")?,
        cost_micros: row.try_get("cost_micros")?,
        instance_gone_at: opt_time(row, "instance_gone_at")?,
        terminate_failures: row.try_get("terminate_failures")?,
        next_terminate_at: opt_time(row, "next_terminate_at")?,
        route_reason: row.try_get("route_reason")?,
    })
}

pub(super) fn event(row: &SqliteRow) -> Result<LoraEvent> {
    Ok(LoraEvent {
        id: row.try_get("id")?,
        lora_id: uuid(row, "lora_id")?.into(),
        kind: row.try_get("kind")?,
        status: parse_status(&row.try_get::<String, _>("status")?)?,
        data: json(row, "data")?,
        at: time(row, "at")?,
    })
}

pub(super) async fn fetch_lora(conn: &mut SqliteConnection, id: &str) -> Result<Option<LoraModel>> {
    let row = sqlx::query(concat!(lora_select!(), " WHERE m.id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| lora_record(&r)?.into_model()).transpose()
}

/// Reads back a LoRA this transaction has just written.
pub(super) async fn fetch_written(conn: &mut SqliteConnection, id: &str) -> Result<LoraModel> {
    fetch_lora(conn, id)
        .await?
        .ok_or_else(|| corrupt(format!("LoRA {id} vanished inside its own transaction")))
}

/// Appends one entry to a LoRA's event log and returns its id.
pub(super) async fn insert_event(
    conn: &mut SqliteConnection,
    lora_id: &str,
    kind: &str,
    status: TrainingStatus,
    data: &Value,
    at: &str,
) -> Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO lora_events (lora_id, kind, status, data, at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(lora_id)
    .bind(kind)
    .bind(status.as_str())
    .bind(data.to_string())
    .bind(at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_fixed_width_and_round_trip() {
        let t: DateTime<Utc> = "2026-11-23T09:30:00Z".parse().unwrap();
        assert_eq!(ts(t), "2026-11-23T09:30:00.000000Z");
        let t2: DateTime<Utc> = "2026-11-23T09:30:00.123456789Z".parse().unwrap();
        assert_eq!(ts(t2), "2026-11-23T09:30:00.123456Z");
        assert_eq!(parse_ts(&ts(t2)).unwrap(), micros(t2));
        assert!(ts(t) < ts(t2));
    }
}
