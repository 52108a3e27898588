//! Postgres's encodings (native uuid, timestamptz, jsonb), decoded into the shared records of
//! `crate::common`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use loraforge_domain::{LoraModel, TrainingStatus};

use crate::common::{
    HiddenRecord, LoraRecord, RunRecord, SummaryRecord, corrupt, micros, parse_status,
};
use crate::{LoraEvent, Result};

/// Postgres keeps microseconds; truncating here makes what is read back equal what was written.
pub(super) fn ts(t: DateTime<Utc>) -> DateTime<Utc> {
    micros(t)
}

fn json(row: &PgRow, col: &str) -> Result<Value> {
    Ok(row.try_get::<Json<Value>, _>(col)?.0)
}

/// Decodes a row of `lora_select!()`.
pub(super) fn lora_record(row: &PgRow) -> Result<LoraRecord> {
    Ok(LoraRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        dataset_id: row.try_get("dataset_id")?,
        params: json(row, "params")?,
        status: row.try_get("training_status")?,
        stage: row.try_get("stage")?,
        progress: i64::from(row.try_get::<i32, _>("progress")?),
        estimated_remaining: row
            .try_get::<Option<i32>, _>("estimated_remaining")?
            .map(i64::from),
        error: row.try_get("error")?,
        usage_count: row.try_get("usage_count")?,
        storage_key: row.try_get("storage_key")?,
        file_size: row.try_get("file_size")?,
        validation_image_keys: json(row, "validation_image_keys")?,
        validation_passed: row.try_get("validation_passed")?,
        validation_scores: row
            .try_get::<Option<Json<Value>>, _>("validation_scores")?
            .map(|j| j.0),
        training_cost_micros: row.try_get("training_cost_micros")?,
        status_message: row.try_get("status_message")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
        character_id: row.try_get("character_id")?,
        triggered_by_job_id: row.try_get("triggered_by_job_id")?,
        sha256: row.try_get("sha256")?,
        file_missing_since: row.try_get("file_missing_since")?,
        hidden: hidden_record(row)?,
    })
}

/// Decodes the moderation columns (`hidden_at`, `hidden_reason`, `hidden_by`) of a row.
pub(super) fn hidden_record(row: &PgRow) -> Result<HiddenRecord> {
    Ok(HiddenRecord {
        at: row.try_get("hidden_at")?,
        reason: row.try_get("hidden_reason")?,
        by: row.try_get("hidden_by")?,
    })
}

/// Decodes a library listing row (id, user_id, email, name, description, training_status,
/// usage_count, created_at).
pub(super) fn summary_record(row: &PgRow) -> Result<SummaryRecord> {
    Ok(SummaryRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        status: row.try_get("training_status")?,
        usage_count: row.try_get("usage_count")?,
        created_at: row.try_get("created_at")?,
        character_id: row.try_get("character_id")?,
        triggered_by_job_id: row.try_get("triggered_by_job_id")?,
        hidden: hidden_record(row)?,
    })
}

/// Decodes a `training_runs` row (every column).
pub(super) fn run_record(row: &PgRow) -> Result<RunRecord> {
    Ok(RunRecord {
        id: row.try_get("id")?,
        lora_id: row.try_get("lora_id")?,
        attempt: i64::from(row.try_get::<i32, _>("attempt")?),
        backend: row.try_get("backend")?,
        engine: row.try_get("engine")?,
        instance_name: row.try_get("instance_name")?,
        provider_id: row.try_get("provider_id")?,
        gpu_type: row.try_get("gpu_type")?,
        price_per_hour_micros: row.try_get("price_per_hour_micros")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        outcome: row.try_get("outcome")?,
        reason: row.try_get("reason")?,
        result: row
            .try_get::<Option<Json<Value>>, _>("result")?
            .map(|j| j.0),
        settled_at: row.try_get("settled_at")?,
        cost_micros: row.try_get("cost_micros")?,
        instance_gone_at: row.try_get("instance_gone_at")?,
        terminate_failures: i64::from(row.try_get::<i32, _>("terminate_failures")?),
        next_terminate_at: row.try_get("next_terminate_at")?,
        route_reason: row.try_get("route_reason")?,
    })
}

pub(super) fn event(row: &PgRow) -> Result<LoraEvent> {
    Ok(LoraEvent {
        id: row.try_get("id")?,
        lora_id: row.try_get::<Uuid, _>("lora_id")?.into(),
        kind: row.try_get("kind")?,
        status: parse_status(&row.try_get::<String, _>("status")?)?,
        data: json(row, "data")?,
        at: row.try_get("at")?,
    })
}

pub(super) async fn fetch_lora(conn: &mut PgConnection, id: Uuid) -> Result<Option<LoraModel>> {
    let row = sqlx::query(concat!(lora_select!(), " WHERE m.id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| lora_record(&r)?.into_model()).transpose()
}

/// Reads back a LoRA this transaction has just written.
pub(super) async fn fetch_written(conn: &mut PgConnection, id: Uuid) -> Result<LoraModel> {
    fetch_lora(conn, id)
        .await?
        .ok_or_else(|| corrupt(format!("LoRA {id} vanished inside its own transaction")))
}

/// Appends one entry to a LoRA's event log and returns its id. Callers have locked (updated or
/// inserted) the LoRA's row in the same transaction first.
pub(super) async fn insert_event(
    conn: &mut PgConnection,
    lora_id: Uuid,
    kind: &str,
    status: TrainingStatus,
    data: &Value,
    at: DateTime<Utc>,
) -> Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO lora_events (lora_id, kind, status, data, at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(lora_id)
    .bind(kind)
    .bind(status.as_str())
    .bind(Json(data))
    .bind(at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

/// Status names for `= ANY($n)`.
pub(super) fn status_names(statuses: &[TrainingStatus]) -> Vec<String> {
    statuses.iter().map(|s| s.as_str().to_owned()).collect()
}
