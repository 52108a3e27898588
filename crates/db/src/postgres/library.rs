//! The library on Postgres: creating LoRAs under the owner's row lock, listing and searching them.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use loraforge_domain::{LoraId, LoraModel, LoraSort, LoraSummary, MonthlyWindow, TrainingStatus};

use super::PgRepository;
use super::rows::{fetch_lora, fetch_written, insert_event, status_names, summary_record, ts};
use crate::common::{
    capped_total, corrupt, created_data, parse_status, search_words, to_u32, updated_data,
    walk_search,
};
use crate::{
    CreateOutcome, DbError, FaultPoint, LoraQuery, MonthlyPolicy, NewLora, Page, Result,
    SEARCH_TOTAL_CAP,
};

pub(super) async fn create_lora(
    repo: &PgRepository,
    new: NewLora,
    policy: MonthlyPolicy,
) -> Result<CreateOutcome> {
    let outcome = in_write_tx!(repo, |conn| async {
        create_in_tx(repo, conn, &new, policy).await.map(Some)
    });
    outcome?.ok_or_else(|| corrupt("create_lora produced no outcome"))
}

/// Takes the per-user lock: the owner's `user_training_limits` row, created on first use, held
/// `FOR UPDATE` until the transaction ends. Returns the user's own monthly limit, if set.
pub(super) async fn lock_user(
    conn: &mut PgConnection,
    user: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<u32>> {
    sqlx::query(
        "INSERT INTO user_training_limits (user_id, updated_at) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let limit: Option<i32> = sqlx::query_scalar(
        "SELECT monthly_limit FROM user_training_limits WHERE user_id = $1 FOR UPDATE",
    )
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    limit
        .map(|l| to_u32(i64::from(l), "monthly_limit"))
        .transpose()
}

async fn create_in_tx(
    repo: &PgRepository,
    conn: &mut PgConnection,
    new: &NewLora,
    policy: MonthlyPolicy,
) -> Result<CreateOutcome> {
    let user = new.owner.as_uuid();
    let id = new.id.as_uuid();
    let name = new.name.as_str();
    let now = ts(new.now);

    // Everything below runs while this user's lock row is held, so concurrent creates of one user
    // see each other's committed LoRAs and idempotency keys (READ COMMITTED: each statement after
    // the lock reads a fresh snapshot).
    let own_limit = lock_user(conn, user, now).await?;

    if let Some(key) = &new.idempotency {
        let prior: Option<(String, Uuid)> = sqlx::query_as(
            "SELECT request_hash, lora_id FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(user)
        .bind(&key.key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((hash, lora_id)) = prior {
            if hash != key.request_hash {
                return Err(DbError::IdempotencyKeyReused);
            }
            return Ok(CreateOutcome::Replayed(fetch_written(conn, lora_id).await?));
        }
    }

    // A dataset whose images the retention sweep removed cannot be trained again.
    let owner: Option<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM datasets WHERE id = $1 AND images_removed_at IS NULL",
    )
    .bind(new.dataset_id.as_uuid())
    .fetch_optional(&mut *conn)
    .await?;
    if owner != Some(user) {
        return Err(DbError::DatasetNotFound);
    }

    let name_key = new.name.key();
    let taken: Option<String> =
        sqlx::query_scalar("SELECT name FROM lora_models WHERE user_id = $1 AND name_key = $2")
            .bind(user)
            .bind(&name_key)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(existing) = taken {
        return Err(DbError::DuplicateName(existing));
    }

    let limit = own_limit.unwrap_or(policy.limit);
    let used = if repo.faults.fire(FaultPoint::MonthlyCount) {
        Err(DbError::Injected(FaultPoint::MonthlyCount))
    } else {
        // In a savepoint: a failing count must not abort the transaction we fail open in.
        let mut sp = conn.begin().await?;
        match count_monthly(&mut sp, user, policy.window).await {
            Ok(n) => {
                sp.commit().await?;
                Ok(n)
            }
            Err(e) => {
                sp.rollback().await?;
                Err(e)
            }
        }
    };
    match used {
        Ok(used) if used >= limit => return Err(DbError::MonthlyLimitReached { used, limit }),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, user = %new.owner, "monthly count failed; allowing the create (fail open)")
        }
    }

    sqlx::query(
        "INSERT INTO users (id, email, created_at, updated_at) VALUES ($1, $2, $3, $3) \
         ON CONFLICT (id) DO UPDATE SET email = coalesce(EXCLUDED.email, users.email), updated_at = EXCLUDED.updated_at",
    )
    .bind(user)
    .bind(&new.owner_email)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO lora_models (id, user_id, name, description, dataset_id, params, training_status, \
         created_at, updated_at, name_key, character_id, triggered_by_job_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11)",
    )
    .bind(id)
    .bind(user)
    .bind(name)
    .bind(&new.description)
    .bind(new.dataset_id.as_uuid())
    .bind(Json(&new.params))
    .bind(TrainingStatus::Pending.as_str())
    .bind(now)
    .bind(&name_key)
    .bind(&new.character_id)
    .bind(&new.triggered_by_job_id)
    .execute(&mut *conn)
    .await
    .map_err(|e| duplicate_name(e, name))?;
    sqlx::query("INSERT INTO training_jobs (lora_id, created_at) VALUES ($1, $2)")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if let Some(price) = new.reserve {
        super::credits::reserve_in_tx(conn, user, id, price, now).await?;
    }
    insert_event(
        conn,
        id,
        "created",
        TrainingStatus::Pending,
        &created_data(name),
        now,
    )
    .await?;
    if let Some(hook) = &new.webhook {
        super::webhooks::insert_webhook(conn, id, hook, now).await?;
    }
    if let Some(key) = &new.idempotency {
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, lora_id, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(user)
        .bind(&key.key)
        .bind(&key.request_hash)
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(CreateOutcome::Created(fetch_written(conn, id).await?))
}

/// Fills in the name key of LoRAs stored before keys existed (migration 0006), oldest first
/// (`common::backfill_name_keys`), one replica at a time. Does nothing once every row has one.
pub(super) async fn backfill_name_keys(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    // Replicas starting together take turns; the second finds nothing left to do.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(NAME_KEY_BACKFILL_LOCK)
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT user_id, id, name FROM lora_models WHERE name_key IS NULL ORDER BY created_at, id",
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let taken: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT user_id, name_key FROM lora_models WHERE name_key IS NOT NULL")
            .fetch_all(&mut *tx)
            .await?;
    let n = rows.len();
    let (ids, keys): (Vec<Uuid>, Vec<String>) = crate::common::backfill_name_keys(taken, rows)
        .into_iter()
        .unzip();
    sqlx::query(
        "UPDATE lora_models m SET name_key = t.key FROM UNNEST($1::uuid[], $2::text[]) AS t(id, key) \
         WHERE m.id = t.id",
    )
    .bind(&ids)
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        loras = n,
        "name keys filled in for LoRAs stored before them"
    );
    Ok(())
}

/// Advisory lock id of [`backfill_name_keys`] ("lfnamkey").
const NAME_KEY_BACKFILL_LOCK: i64 = 0x6c66_6e61_6d6b_6579;

/// The unique index on (user_id, name_key) is the last line of defence against duplicates.
fn duplicate_name(e: sqlx::Error, name: &str) -> DbError {
    match &e {
        sqlx::Error::Database(d) if d.constraint() == Some("lora_models_user_name_key") => {
            DbError::DuplicateName(name.to_owned())
        }
        _ => e.into(),
    }
}

pub(super) async fn count_monthly(
    conn: &mut PgConnection,
    user: Uuid,
    window: MonthlyWindow,
) -> Result<u32> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lora_models WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 \
         AND training_status = ANY($4)",
    )
    .bind(user)
    .bind(window.start)
    .bind(window.end)
    .bind(status_names(&TrainingStatus::COUNTED))
    .fetch_one(&mut *conn)
    .await?;
    to_u32(n, "count")
}

/// A `to_tsquery` text matching every word as a prefix. Words hold only letters and digits (see
/// `search_words`), so no operator typed by a user reaches the parser.
fn tsquery(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("{w}:*"))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// `… FROM lora_models m WHERE …` filters other than search, shared by every listing query.
fn push_filters(qb: &mut QueryBuilder<Postgres>, query: &LoraQuery) {
    if let Some(status) = query.status {
        qb.push(" AND m.training_status = ")
            .push_bind(status.as_str());
    }
    if let Some(creator) = query.creator {
        qb.push(" AND m.user_id = ").push_bind(creator.as_uuid());
    }
    if !query.include_hidden {
        // Matches the `…_visible` partial indexes (migration 0013).
        qb.push(" AND m.hidden_at IS NULL");
    }
    if query.awaiting_review {
        qb.push(crate::common::awaiting_review_filter());
    }
    push_handoff_filters(qb, query);
}

/// The hand-off's filters (migration 0012): the character and the generation job.
fn push_handoff_filters(qb: &mut QueryBuilder<Postgres>, query: &LoraQuery) {
    if let Some(c) = &query.character_id {
        qb.push(" AND m.character_id = ").push_bind(c.clone());
    }
    if let Some(j) = &query.triggered_by_job_id {
        qb.push(" AND m.triggered_by_job_id = ")
            .push_bind(j.clone());
    }
}

fn push_order(qb: &mut QueryBuilder<Postgres>, sort: LoraSort, alias: &str) {
    qb.push(
        match sort {
            LoraSort::Popular => " ORDER BY {a}.usage_count DESC, {a}.created_at DESC, {a}.id DESC",
            LoraSort::Recent => " ORDER BY {a}.created_at DESC, {a}.id DESC",
            // "C": byte order, as SQLite sorts, whatever the database's locale.
            LoraSort::Name => {
                " ORDER BY lower({a}.name) COLLATE \"C\", {a}.created_at DESC, {a}.id DESC"
            }
        }
        .replace("{a}", alias),
    );
}

fn push_page(qb: &mut QueryBuilder<Postgres>, query: &LoraQuery) {
    qb.push(" LIMIT ")
        .push_bind(i64::from(query.limit))
        .push(" OFFSET ")
        .push_bind(i64::try_from(query.offset).unwrap_or(i64::MAX));
}

/// Fetching a match through the GIN index and its heap recheck costs about this many steps of a
/// sort index with the search as a filter (measured on a 100k-row library, docs/performance.md).
const LOOKUP_COST: u64 = 2;

const SUMMARY_COLUMNS: &str = "m.id, m.user_id, m.name, m.description, m.training_status, m.usage_count, m.created_at, \
     m.character_id, m.triggered_by_job_id, m.hidden_at, m.hidden_reason, m.hidden_by";

pub(super) async fn list_loras(pool: &PgPool, query: &LoraQuery) -> Result<Page<LoraSummary>> {
    let words = query
        .search
        .as_deref()
        .map(search_words)
        .unwrap_or_default();
    let mut conn = pool.acquire().await?;
    if !words.is_empty() {
        return search_loras(&mut conn, query, &tsquery(&words)).await;
    }

    let mut qb = QueryBuilder::<Postgres>::new("SELECT ");
    qb.push(SUMMARY_COLUMNS)
        .push(", u.email, u.display_name FROM lora_models m LEFT JOIN users u ON u.id = m.user_id WHERE TRUE");
    push_filters(&mut qb, query);
    push_order(&mut qb, query.sort, "m");
    push_page(&mut qb, query);
    let rows = qb.build().fetch_all(&mut *conn).await?;
    let mut qb = QueryBuilder::<Postgres>::new("SELECT count(*) FROM lora_models m WHERE TRUE");
    push_filters(&mut qb, query);
    let total: i64 = qb.build_query_scalar().fetch_one(&mut *conn).await?;
    Ok(Page {
        items: to_items(&rows)?,
        total: u64::try_from(total).map_err(|_| corrupt("negative count"))?,
        total_exact: true,
    })
}

fn to_items(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<LoraSummary>> {
    rows.iter()
        .map(|r| summary_record(r)?.into_summary())
        .collect()
}

/// A search in steps, each as cheap as the word allows: count the matches (with the planner's
/// row estimate of the table in the same round trip), find the ids of the page, then read those
/// rows and their creators only. The old single query materialized every match with its
/// description, joined every creator and sorted them all for `count(*) OVER ()`.
async fn search_loras(
    conn: &mut PgConnection,
    query: &LoraQuery,
    tsq: &str,
) -> Result<Page<LoraSummary>> {
    // At most SEARCH_TOTAL_CAP + 1 matches are counted (and rechecked on the heap): past the
    // cap the total is a lower bound.
    let mut qb = QueryBuilder::<Postgres>::new(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM lora_models m WHERE m.search @@ to_tsquery('simple', ",
    );
    qb.push_bind(tsq).push(")");
    push_filters(&mut qb, query);
    qb.push(" LIMIT ")
        .push_bind(i64::try_from(SEARCH_TOTAL_CAP + 1).unwrap_or(i64::MAX))
        .push(
            ") c), (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'lora_models'::regclass)",
        );
    let (total, rows): (Option<i64>, Option<i64>) =
        qb.build_query_as().fetch_one(&mut *conn).await?;
    let total = total.unwrap_or(0);
    let (total, total_exact) = capped_total(total, SEARCH_TOTAL_CAP)?;
    if total_exact && total <= query.offset {
        return Ok(Page {
            items: Vec::new(),
            total,
            total_exact,
        });
    }

    let mut qb = QueryBuilder::<Postgres>::new("SELECT ");
    qb.push(SUMMARY_COLUMNS)
        .push(", u.email, u.display_name FROM (");
    let rows = rows.and_then(|r| u64::try_from(r).ok()).unwrap_or(0);
    if walk_search(
        total,
        total_exact,
        rows,
        query.offset,
        query.limit,
        LOOKUP_COST,
    ) {
        // Walk the sort's index, testing each row. `IS TRUE` hides the condition from the GIN
        // index, so even a generic plan of this prepared statement walks instead of sorting.
        qb.push("SELECT m.id FROM lora_models m WHERE (m.search @@ to_tsquery('simple', ")
            .push_bind(tsq)
            .push(")) IS TRUE");
        push_filters(&mut qb, query);
        push_order(&mut qb, query.sort, "m");
    } else {
        // The planner cannot tell how selective a prefix query is and may walk the popularity
        // index filtering every row (60 ms on 100k rows). The MATERIALIZED CTE makes the GIN
        // index produce the matches first, with only the columns the sort needs.
        qb.push(
            "WITH hits AS MATERIALIZED (SELECT m.id, m.name, m.usage_count, m.created_at FROM lora_models m \
             WHERE m.search @@ to_tsquery('simple', ",
        )
        .push_bind(tsq)
        .push(")");
        push_filters(&mut qb, query);
        qb.push(") SELECT h.id FROM hits h");
        push_order(&mut qb, query.sort, "h");
    }
    push_page(&mut qb, query);
    qb.push(") p JOIN lora_models m ON m.id = p.id LEFT JOIN users u ON u.id = m.user_id");
    push_order(&mut qb, query.sort, "m");
    let rows = qb.build().fetch_all(&mut *conn).await?;
    Ok(Page {
        items: to_items(&rows)?,
        total,
        total_exact,
    })
}

pub(super) async fn update_description(
    repo: &PgRepository,
    id: LoraId,
    description: Option<String>,
    now: DateTime<Utc>,
) -> Result<LoraModel> {
    let id = id.as_uuid();
    let now = ts(now);
    let updated = in_write_tx!(repo, |conn| async {
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE lora_models SET description = $1, updated_at = $2 WHERE id = $3 RETURNING training_status",
        )
        .bind(&description)
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(status) = status else {
            return Ok(None);
        };
        insert_event(
            conn,
            id,
            "updated",
            parse_status(&status)?,
            &updated_data(description.as_deref()),
            now,
        )
        .await?;
        fetch_lora(conn, id).await
    })?;
    updated.ok_or(DbError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsquery_has_only_words_and_prefix_operators() {
        let words = search_words("Cyber & girl:* | !x (y) '; DROP");
        assert_eq!(tsquery(&words), "cyber:* & girl:* & x:* & y:* & drop:*");
    }
}
