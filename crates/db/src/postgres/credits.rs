//! Credits and quote samples on Postgres (`0009_credits.sql`). A create's check-and-reserve runs
//! under the owner's lock row (`library::lock_user`); settlements rely on the ledger's unique key
//! (`ON CONFLICT DO NOTHING` waits for a concurrent writer of the same key, then skips).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use loraforge_domain::credit::{CreditKind, Settlement};
use loraforge_domain::quote::QuoteSample;
use loraforge_domain::{LoraId, MicroUsd, UserId};

use super::PgRepository;
use super::rows::ts;
use crate::common::{corrupt, parse_status, to_i64};
use crate::credits::{
    DUE_RESERVATIONS, SETTLEMENT_STATE, SettlementState, check_reserve, entry_reason, quote_sample,
};
use crate::{
    CreditEntry, CreditStore, CreditSummary, DueReservation, NewCreditGrant, Result, SettledCredits,
};

const SUMS: &str = "SELECT COALESCE(SUM(amount_micros), 0)::bigint AS total, \
     COALESCE(SUM(CASE WHEN kind IN ('reserve', 'release', 'refund') THEN amount_micros ELSE 0 END), 0)::bigint AS held \
     FROM credit_entries WHERE user_id = $1";

async fn summary(conn: &mut PgConnection, user: Uuid) -> Result<CreditSummary> {
    let (total, held): (i64, i64) = sqlx::query_as(SUMS).bind(user).fetch_one(conn).await?;
    Ok(CreditSummary::from_sums(total, held))
}

fn entry_row(row: &PgRow) -> Result<CreditEntry> {
    let kind: String = row.try_get("kind")?;
    Ok(CreditEntry {
        id: row.try_get("id")?,
        user_id: UserId(row.try_get("user_id")?),
        lora_id: row.try_get::<Option<Uuid>, _>("lora_id")?.map(LoraId),
        kind: CreditKind::parse(&kind).ok_or_else(|| corrupt(format!("credit kind {kind:?}")))?,
        amount: MicroUsd(row.try_get("amount_micros")?),
        reason: row.try_get("reason")?,
        actor: row.try_get("actor")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts one entry and returns its id; a per-LoRA kind already written is skipped (`None`).
#[allow(clippy::too_many_arguments)] // one per column of the entry
async fn insert_entry(
    conn: &mut PgConnection,
    user: Uuid,
    lora: Option<Uuid>,
    kind: CreditKind,
    amount: MicroUsd,
    reason: &str,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<i64>> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO credit_entries (user_id, lora_id, kind, amount_micros, reason, actor, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(user)
    .bind(lora)
    .bind(kind.as_str())
    .bind(amount.0)
    .bind(reason)
    .bind(actor)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(id)
}

/// Inside `create_lora`'s write transaction, after the LoRA's insert: reserves `price` from the
/// owner's available credits, or `InsufficientCredits` (the caller's rollback undoes the insert).
pub(super) async fn reserve_in_tx(
    conn: &mut PgConnection,
    user: Uuid,
    lora: Uuid,
    price: MicroUsd,
    now: DateTime<Utc>,
) -> Result<()> {
    check_reserve(summary(conn, user).await?, price)?;
    let reason = entry_reason(CreditKind::Reserve);
    insert_entry(
        conn,
        user,
        Some(lora),
        CreditKind::Reserve,
        MicroUsd(-price.0),
        reason,
        None,
        now,
    )
    .await?;
    Ok(())
}

#[async_trait]
impl CreditStore for PgRepository {
    async fn credit_summary(&self, user: UserId) -> Result<CreditSummary> {
        let mut conn = self.pool.acquire().await?;
        summary(&mut conn, user.as_uuid()).await
    }

    async fn credit_history(
        &self,
        user: UserId,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<CreditEntry>> {
        let rows = sqlx::query(
            "SELECT id, user_id, lora_id, kind, amount_micros, reason, actor, created_at \
             FROM credit_entries WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
        )
        .bind(user.as_uuid())
        .bind(i64::from(limit))
        .bind(to_i64(offset, "offset")?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_row).collect()
    }

    async fn add_credits(&self, grant: NewCreditGrant) -> Result<CreditEntry> {
        if grant.kind.per_lora() {
            return Err(corrupt(format!(
                "{} is not an admin's entry",
                grant.kind.as_str()
            )));
        }
        let mut tx = self.write_tx().await?;
        let id = insert_entry(
            &mut tx,
            grant.user_id.as_uuid(),
            None,
            grant.kind,
            grant.amount,
            &grant.reason,
            grant.actor.as_deref(),
            ts(grant.now),
        )
        .await?
        .ok_or_else(|| corrupt("a grant was not inserted"))?;
        let row = sqlx::query(
            "SELECT id, user_id, lora_id, kind, amount_micros, reason, actor, created_at \
             FROM credit_entries WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let entry = entry_row(&row)?;
        tx.commit().await?;
        Ok(entry)
    }

    async fn due_reservations(&self, limit: u32) -> Result<Vec<DueReservation>> {
        let rows = sqlx::query(DUE_RESERVATIONS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DueReservation {
                    lora_id: LoraId(row.try_get("lora_id")?),
                    user_id: UserId(row.try_get("user_id")?),
                    reserved: MicroUsd(-row.try_get::<i64, _>("amount_micros")?),
                    status: parse_status(&row.try_get::<String, _>("training_status")?)?,
                })
            })
            .collect()
    }

    async fn settle_reservation(
        &self,
        lora: LoraId,
        settlement: Settlement,
        now: DateTime<Utc>,
    ) -> Result<SettledCredits> {
        let lora_s = lora.as_uuid();
        let mut tx = self.write_tx().await?;
        // The reservation's row lock serializes settlements of one LoRA: a charge decided on
        // `completed` and a reimbursement after the file was lost cannot both read "nothing
        // returned yet". The state is read after the lock, by a statement that sees what the
        // previous holder committed.
        sqlx::query(
            "SELECT id FROM credit_entries WHERE lora_id = $1 AND kind = 'reserve' FOR UPDATE",
        )
        .bind(lora_s)
        .fetch_optional(&mut *tx)
        .await?;
        let row = sqlx::query(SETTLEMENT_STATE)
            .bind(lora_s)
            .fetch_optional(&mut *tx)
            .await?;
        let mut out = SettledCredits::default();
        if let Some(row) = row {
            let user: Uuid = row.try_get("user_id")?;
            let state = SettlementState::from_row(&row)?;
            let now = ts(now);
            for (kind, value) in state.entries(settlement) {
                let reason = entry_reason(kind);
                if insert_entry(&mut tx, user, Some(lora_s), kind, value, reason, None, now)
                    .await?
                    .is_some()
                {
                    out.note(kind, value);
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn quote_samples(&self, per_backend: u32) -> Result<Vec<QuoteSample>> {
        let rows = sqlx::query(
            "SELECT backend, gpu_type, params, started_at, ended_at, cost_micros, price_per_hour_micros FROM ( \
               SELECT t.backend, t.gpu_type, l.params, t.started_at, \
                      COALESCE(t.instance_gone_at, t.ended_at) AS ended_at, t.cost_micros, t.price_per_hour_micros, \
                      ROW_NUMBER() OVER (PARTITION BY t.backend ORDER BY t.ended_at DESC) AS n \
               FROM training_runs t JOIN lora_models l ON l.id = t.lora_id \
               WHERE t.outcome = 'trained' AND t.ended_at IS NOT NULL AND t.cost_micros IS NOT NULL) s \
             WHERE n <= $1",
        )
        .bind(i64::from(per_backend))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let Json(params): Json<serde_json::Value> = row.try_get("params")?;
            out.extend(quote_sample(
                row.try_get("backend")?,
                row.try_get("gpu_type")?,
                &params,
                row.try_get("started_at")?,
                row.try_get("ended_at")?,
                row.try_get("cost_micros")?,
                row.try_get("price_per_hour_micros")?,
            ));
        }
        Ok(out)
    }
}
