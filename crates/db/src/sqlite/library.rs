//! The library on SQLite: creating LoRAs under the write lock, listing and searching them.

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use loraforge_domain::{LoraId, LoraModel, LoraSort, LoraSummary, MonthlyWindow, TrainingStatus};

use super::SqliteRepository;
use super::rows::{fetch_lora, fetch_written, insert_event, summary_record, ts};
use crate::common::{
    capped_total, corrupt, created_data, search_words, to_u32, updated_data, walk_search,
};
use crate::{
    CreateOutcome, DbError, FaultPoint, LoraQuery, MonthlyPolicy, NewLora, Page, Result,
    SEARCH_TOTAL_CAP,
};

pub(super) async fn create_lora(
    repo: &SqliteRepository,
    new: NewLora,
    policy: MonthlyPolicy,
) -> Result<CreateOutcome> {
    // BEGIN IMMEDIATE: the whole check-then-insert runs under SQLite's single write lock.
    let outcome = in_write_tx!(repo, |conn| async {
        create_in_tx(repo, conn, &new, policy).await.map(Some)
    });
    outcome?.ok_or_else(|| corrupt("create_lora produced no outcome"))
}

async fn create_in_tx(
    repo: &SqliteRepository,
    conn: &mut SqliteConnection,
    new: &NewLora,
    policy: MonthlyPolicy,
) -> Result<CreateOutcome> {
    let user = new.owner.to_string();
    let id = new.id.to_string();
    let name = new.name.as_str();
    let now = ts(new.now);

    if let Some(key) = &new.idempotency {
        let prior: Option<(String, String)> = sqlx::query_as(
            "SELECT request_hash, lora_id FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(&user)
        .bind(&key.key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((hash, lora_id)) = prior {
            if hash != key.request_hash {
                return Err(DbError::IdempotencyKeyReused);
            }
            return Ok(CreateOutcome::Replayed(
                fetch_written(conn, &lora_id).await?,
            ));
        }
    }

    // A dataset whose images the retention sweep removed cannot be trained again.
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT user_id FROM datasets WHERE id = $1 AND images_removed_at IS NULL",
    )
    .bind(new.dataset_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    if owner.as_deref() != Some(user.as_str()) {
        return Err(DbError::DatasetNotFound);
    }

    let name_key = new.name.key();
    let taken: Option<String> =
        sqlx::query_scalar("SELECT name FROM lora_models WHERE user_id = $1 AND name_key = $2")
            .bind(&user)
            .bind(&name_key)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(existing) = taken {
        return Err(DbError::DuplicateName(existing));
    }

    let own_limit: Option<Option<i64>> =
        sqlx::query_scalar("SELECT monthly_limit FROM user_training_limits WHERE user_id = $1")
            .bind(&user)
            .fetch_optional(&mut *conn)
            .await?;
    let limit = match own_limit.flatten() {
        Some(l) => to_u32(l, "monthly_limit")?,
        None => policy.limit,
    };
    let used = if repo.faults.fire(FaultPoint::MonthlyCount) {
        Err(DbError::Injected(FaultPoint::MonthlyCount))
    } else {
        count_monthly(conn, &user, policy.window).await
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
         ON CONFLICT (id) DO UPDATE SET email = coalesce(excluded.email, users.email), updated_at = excluded.updated_at",
    )
    .bind(&user)
    .bind(&new.owner_email)
    .bind(&now)
    .execute(&mut *conn)
    .await?;
    let params = serde_json::to_string(&new.params).map_err(|e| corrupt(format!("params: {e}")))?;
    sqlx::query(
        "INSERT INTO lora_models (id, user_id, name, description, dataset_id, params, training_status, \
         created_at, updated_at, name_key, character_id, triggered_by_job_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11)",
    )
    .bind(&id)
    .bind(&user)
    .bind(name)
    .bind(&new.description)
    .bind(new.dataset_id.to_string())
    .bind(params)
    .bind(TrainingStatus::Pending.as_str())
    .bind(&now)
    .bind(&name_key)
    .bind(&new.character_id)
    .bind(&new.triggered_by_job_id)
    .execute(&mut *conn)
    .await
    .map_err(|e| duplicate_name(e, name))?;
    sqlx::query("INSERT INTO training_jobs (lora_id, created_at) VALUES ($1, $2)")
        .bind(&id)
        .bind(&now)
        .execute(&mut *conn)
        .await?;
    if let Some(price) = new.reserve {
        super::credits::reserve_in_tx(conn, &user, &id, price, &now).await?;
    }
    insert_event(
        conn,
        &id,
        "created",
        TrainingStatus::Pending,
        &created_data(name),
        &now,
    )
    .await?;
    if let Some(hook) = &new.webhook {
        super::webhooks::insert_webhook(conn, &id, hook, &now).await?;
    }
    if let Some(key) = &new.idempotency {
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, lora_id, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&user)
        .bind(&key.key)
        .bind(&key.request_hash)
        .bind(&id)
        .bind(&now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(CreateOutcome::Created(fetch_written(conn, &id).await?))
}

/// Fills in the name key of LoRAs stored before keys existed (migration 0006), under the write
/// lock, oldest first (`common::backfill_name_keys`). Does nothing once every row has one.
pub(super) async fn backfill_name_keys(pool: &SqlitePool) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT user_id, id, name FROM lora_models WHERE name_key IS NULL ORDER BY created_at, id",
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let taken: Vec<(String, String)> =
        sqlx::query_as("SELECT user_id, name_key FROM lora_models WHERE name_key IS NOT NULL")
            .fetch_all(&mut *tx)
            .await?;
    let n = rows.len();
    for (id, key) in crate::common::backfill_name_keys(taken, rows) {
        sqlx::query("UPDATE lora_models SET name_key = $1 WHERE id = $2")
            .bind(key)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(
        loras = n,
        "name keys filled in for LoRAs stored before them"
    );
    Ok(())
}

/// The unique index on (user_id, name_key) is the last line of defence against duplicates.
fn duplicate_name(e: sqlx::Error, name: &str) -> DbError {
    match &e {
        sqlx::Error::Database(d)
            if d.is_unique_violation() && d.message().contains("lora_models.name_key") =>
        {
            DbError::DuplicateName(name.to_owned())
        }
        _ => e.into(),
    }
}

pub(super) async fn count_monthly(
    conn: &mut SqliteConnection,
    user: &str,
    window: MonthlyWindow,
) -> Result<u32> {
    let mut qb = QueryBuilder::<Sqlite>::new("SELECT count(*) FROM lora_models WHERE user_id = ");
    qb.push_bind(user)
        .push(" AND created_at >= ")
        .push_bind(ts(window.start))
        .push(" AND created_at < ")
        .push_bind(ts(window.end))
        .push(" AND training_status IN (");
    let mut list = qb.separated(", ");
    for s in TrainingStatus::COUNTED {
        list.push_bind(s.as_str());
    }
    qb.push(")");
    let n: i64 = qb.build_query_scalar().fetch_one(&mut *conn).await?;
    to_u32(n, "count")
}

/// An FTS5 query matching every word as a prefix. Words hold only letters and digits (see
/// `search_words`), and each is quoted, so `NEAR`, `AND`, `-` or `*` typed by a user stay text.
fn fts5_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\"*"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Filters other than search, shared by every listing query.
fn push_filters(qb: &mut QueryBuilder<Sqlite>, query: &LoraQuery) {
    if let Some(status) = query.status {
        qb.push(" AND m.training_status = ")
            .push_bind(status.as_str());
    }
    if let Some(creator) = query.creator {
        qb.push(" AND m.user_id = ").push_bind(creator.to_string());
    }
    if !query.include_hidden {
        // Implies the `…_visible` partial indexes' condition, so they can serve it (0013).
        qb.push(" AND m.hidden_at IS NULL");
    }
    if query.awaiting_review {
        qb.push(crate::common::awaiting_review_filter());
    }
    push_handoff_filters(qb, query);
}

/// The hand-off's filters (migration 0012): the character and the generation job.
fn push_handoff_filters(qb: &mut QueryBuilder<Sqlite>, query: &LoraQuery) {
    if let Some(c) = &query.character_id {
        qb.push(" AND m.character_id = ").push_bind(c.clone());
    }
    if let Some(j) = &query.triggered_by_job_id {
        qb.push(" AND m.triggered_by_job_id = ")
            .push_bind(j.clone());
    }
}

fn push_order(qb: &mut QueryBuilder<Sqlite>, sort: LoraSort) {
    qb.push(match sort {
        LoraSort::Popular => " ORDER BY m.usage_count DESC, m.created_at DESC, m.id DESC",
        LoraSort::Recent => " ORDER BY m.created_at DESC, m.id DESC",
        LoraSort::Name => " ORDER BY lower(m.name), m.created_at DESC, m.id DESC",
    });
}

fn push_page(qb: &mut QueryBuilder<Sqlite>, query: &LoraQuery) {
    qb.push(" LIMIT ")
        .push_bind(i64::from(query.limit))
        .push(" OFFSET ")
        .push_bind(i64::try_from(query.offset).unwrap_or(i64::MAX));
}

/// The index whose order is `sort`'s (see migrations/sqlite/0001_init.sql), or its partial copy
/// holding visible rows only (0013) when hidden LoRAs are left out.
fn sort_index(sort: LoraSort, include_hidden: bool) -> &'static str {
    match (sort, include_hidden) {
        (LoraSort::Popular, true) => "lora_models_popular",
        (LoraSort::Recent, true) => "lora_models_recent",
        (LoraSort::Name, true) => "lora_models_name",
        (LoraSort::Popular, false) => "lora_models_popular_visible",
        (LoraSort::Recent, false) => "lora_models_recent_visible",
        (LoraSort::Name, false) => "lora_models_name_visible",
    }
}

/// A row lookup by `seq` (a b-tree descent into the wide table) costs about this many steps of a
/// sort index (measured on a 100k-row library, docs/performance.md).
const LOOKUP_COST: u64 = 15;

const SUMMARY_SELECT: &str = "SELECT m.id, m.user_id, u.email, u.display_name, m.name, m.description, m.training_status, m.usage_count, m.created_at, \
     m.character_id, m.triggered_by_job_id, m.hidden_at, m.hidden_reason, m.hidden_by";

pub(super) async fn list_loras(pool: &SqlitePool, query: &LoraQuery) -> Result<Page<LoraSummary>> {
    let words = query
        .search
        .as_deref()
        .map(search_words)
        .unwrap_or_default();
    let mut conn = pool.acquire().await?;
    if !words.is_empty() {
        return search_loras(&mut conn, query, &fts5_query(&words)).await;
    }

    let mut qb = QueryBuilder::<Sqlite>::new(SUMMARY_SELECT);
    qb.push(" FROM lora_models m LEFT JOIN users u ON u.id = m.user_id WHERE 1 = 1");
    push_filters(&mut qb, query);
    push_order(&mut qb, query.sort);
    push_page(&mut qb, query);
    let rows = qb.build().fetch_all(&mut *conn).await?;
    let mut qb = QueryBuilder::<Sqlite>::new("SELECT count(*) FROM lora_models m WHERE 1 = 1");
    push_filters(&mut qb, query);
    let total: i64 = qb.build_query_scalar().fetch_one(&mut *conn).await?;
    Ok(Page {
        items: to_items(&rows)?,
        total: u64::try_from(total).map_err(|_| corrupt("negative count"))?,
        total_exact: true,
    })
}

fn to_items(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<LoraSummary>> {
    rows.iter()
        .map(|r| summary_record(r)?.into_summary())
        .collect()
}

/// A search in three steps, each cheap whatever the word: count the matches, find the `seq`s of
/// the page, then read those rows (and their creators) only. The old single query fetched, joined
/// and sorted every match and buffered them all for `count(*) OVER ()`; a two-letter prefix
/// (10,000–40,000 matches of 100,000) cost 20–65 ms of CPU that way.
async fn search_loras(
    conn: &mut SqliteConnection,
    query: &LoraQuery,
    fts: &str,
) -> Result<Page<LoraSummary>> {
    let filtered = query.status.is_some()
        || query.awaiting_review
        || query.creator.is_some()
        || query.character_id.is_some()
        || query.triggered_by_job_id.is_some();
    // Without filters the full-text index alone counts the matches (its doclists, no table
    // reads; FTS5's prefix indexes `prefix = '2 3'` make a two- or three-letter prefix one
    // doclist). The triggers keep it exactly in step with lora_models.
    // At most SEARCH_TOTAL_CAP + 1 matches are counted: past the cap the total is a lower bound.
    // Leaving hidden LoRAs out needs each match's row, so the public library's count reads at
    // most SEARCH_TOTAL_CAP + 1 (plus the hidden ones among the matches) rows by rowid.
    let mut qb = QueryBuilder::<Sqlite>::new("SELECT (SELECT count(*) FROM (");
    if filtered || !query.include_hidden {
        qb.push(
            "SELECT 1 FROM lora_models_fts f CROSS JOIN lora_models m ON m.seq = f.rowid \
             WHERE lora_models_fts MATCH ",
        )
        .push_bind(fts);
        push_filters(&mut qb, query);
    } else {
        qb.push("SELECT 1 FROM lora_models_fts WHERE lora_models_fts MATCH ")
            .push_bind(fts);
    }
    qb.push(" LIMIT ")
        .push_bind(i64::try_from(SEARCH_TOTAL_CAP + 1).unwrap_or(i64::MAX))
        .push(")), (SELECT coalesce(max(seq), 0) FROM lora_models)");
    let (total, rows): (i64, i64) = qb.build_query_as().fetch_one(&mut *conn).await?;
    let (total, total_exact) = capped_total(total, SEARCH_TOTAL_CAP)?;
    if total_exact && total <= query.offset {
        return Ok(Page {
            items: Vec::new(),
            total,
            total_exact,
        });
    }

    // The page's rows, found one of two ways (see `walk_sort_index`), then read in full.
    let mut qb = QueryBuilder::<Sqlite>::new(SUMMARY_SELECT);
    qb.push(" FROM (");
    let rows = u64::try_from(rows).unwrap_or(0);
    if !filtered
        && walk_search(
            total,
            total_exact,
            rows,
            query.offset,
            query.limit,
            LOOKUP_COST,
        )
    {
        // Walk the sort's index (covering: the order columns and the rowid) and keep the entries
        // whose seq is among the matches; `+` keeps SQLite from turning the IN into lookups.
        // Without hidden LoRAs the walk is over the partial index of visible rows.
        qb.push(format!(
            "SELECT m.seq FROM lora_models m INDEXED BY {} WHERE +m.seq IN \
             (SELECT rowid FROM lora_models_fts WHERE lora_models_fts MATCH ",
            sort_index(query.sort, query.include_hidden)
        ))
        .push_bind(fts)
        .push(")");
        if !query.include_hidden {
            qb.push(" AND m.hidden_at IS NULL");
        }
    } else {
        // CROSS JOIN pins the FTS table as the outer loop. With a plain JOIN the planner may walk
        // an index of lora_models and run the full-text query once per row instead.
        qb.push(
            "SELECT m.seq FROM lora_models_fts f CROSS JOIN lora_models m ON m.seq = f.rowid \
             WHERE lora_models_fts MATCH ",
        )
        .push_bind(fts);
        push_filters(&mut qb, query);
    }
    push_order(&mut qb, query.sort);
    push_page(&mut qb, query);
    qb.push(") p CROSS JOIN lora_models m ON m.seq = p.seq LEFT JOIN users u ON u.id = m.user_id");
    push_order(&mut qb, query.sort);
    let rows = qb.build().fetch_all(&mut *conn).await?;
    Ok(Page {
        items: to_items(&rows)?,
        total,
        total_exact,
    })
}

pub(super) async fn update_description(
    repo: &SqliteRepository,
    id: LoraId,
    description: Option<String>,
    now: DateTime<Utc>,
) -> Result<LoraModel> {
    let id = id.to_string();
    let now = ts(now);
    let updated = in_write_tx!(repo, |conn| async {
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE lora_models SET description = $1, updated_at = $2 WHERE id = $3 RETURNING training_status",
        )
        .bind(&description)
        .bind(&now)
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(status) = status else {
            return Ok(None);
        };
        let status = crate::common::parse_status(&status)?;
        insert_event(
            conn,
            &id,
            "updated",
            status,
            &updated_data(description.as_deref()),
            &now,
        )
        .await?;
        fetch_lora(conn, &id).await
    })?;
    updated.ok_or(DbError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts5_query_quotes_every_word() {
        let words = search_words("cyber \"girl\" NEAR(x*");
        assert_eq!(
            fts5_query(&words),
            "\"cyber\"* AND \"girl\"* AND \"near\"* AND \"x\"*"
        );
    }
}
