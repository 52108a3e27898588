//! The search terms on Postgres (`crate::terms`, migration 0008): indexing LoRAs' terms in the
//! transaction that writes them, and answering a search from the terms in the sort order.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use loraforge_domain::{LoraSort, LoraSummary};

use super::rows::summary_record;
use crate::common::capped_total;
use crate::terms::{MAX_EXPANSION, TERMS_VERSION, TermSearch, WordLookup, index_terms, prefix_end};
use crate::{LoraQuery, Page, Result, SEARCH_TOTAL_CAP};

/// Rows indexed per round of [`index_pending`]; entries are inserted this many at a time.
const BATCH: i64 = 1_000;

/// Indexes every LoRA whose `search_terms_version` is behind [`TERMS_VERSION`]: inside a write
/// transaction, right after the writes that left them so (inserts, a changed description), and
/// when the repository connects (rows an older build wrote). Returns how many it indexed.
pub(super) async fn index_pending(conn: &mut PgConnection) -> Result<u64> {
    let mut indexed = 0;
    loop {
        // SKIP LOCKED: rows another transaction is indexing (or writing) are its to index.
        let rows = sqlx::query(
            "SELECT id, name, description, usage_count, created_at FROM lora_models \
             WHERE search_terms_version < $1 ORDER BY search_terms_version LIMIT $2 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i32::try_from(TERMS_VERSION).unwrap_or(i32::MAX))
        .bind(BATCH)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            return Ok(indexed);
        }
        let mut terms: Vec<String> = Vec::new();
        let mut usages: Vec<i64> = Vec::new();
        let mut createds: Vec<DateTime<Utc>> = Vec::new();
        let mut lora_ids: Vec<Uuid> = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut ids: Vec<Uuid> = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get("name")?;
            let description: Option<String> = row.try_get("description")?;
            let usage: i64 = row.try_get("usage_count")?;
            let created: DateTime<Utc> = row.try_get("created_at")?;
            let id: Uuid = row.try_get("id")?;
            let t = index_terms(&name, description.as_deref());
            for term in t.terms {
                terms.push(term);
                usages.push(usage);
                createds.push(created);
                lora_ids.push(id);
            }
            words.extend(t.words);
            ids.push(id);
        }
        // Sorted, so concurrent transactions take the words' index entries in one order.
        words.sort();
        words.dedup();
        sqlx::query(
            "INSERT INTO lora_search_terms (term, usage_count, created_at, lora_id) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::timestamptz[], $4::uuid[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&terms)
        .bind(&usages)
        .bind(&createds)
        .bind(&lora_ids)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO lora_search_words (word) SELECT * FROM UNNEST($1::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&words)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE lora_models SET search_terms_version = $1 WHERE id = ANY($2)")
            .bind(i32::try_from(TERMS_VERSION).unwrap_or(i32::MAX))
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        indexed += ids.len() as u64;
    }
}

/// Removes the entries of the LoRA `id` as its current name and description gave them and marks
/// it for [`index_pending`]; call before changing either, in the same transaction.
pub(super) async fn unindex(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    let row = sqlx::query(
        "SELECT name, description, usage_count, created_at, search_terms_version \
         FROM lora_models WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let version: i32 = row.try_get("search_terms_version")?;
    if version > 0 {
        let name: String = row.try_get("name")?;
        let description: Option<String> = row.try_get("description")?;
        let terms = index_terms(&name, description.as_deref()).terms;
        if terms.is_empty() {
            // `IN ()` is not SQL everywhere; nothing to remove anyway.
            return mark_pending(conn, id).await;
        }
        let mut qb = QueryBuilder::<Postgres>::new("DELETE FROM lora_search_terms WHERE term IN (");
        let mut list = qb.separated(", ");
        for t in &terms {
            list.push_bind(t.clone());
        }
        qb.push(") AND usage_count = ")
            .push_bind(row.try_get::<i64, _>("usage_count")?)
            .push(" AND created_at = ")
            .push_bind(row.try_get::<DateTime<Utc>, _>("created_at")?)
            .push(" AND lora_id = ")
            .push_bind(id);
        qb.build().execute(&mut *conn).await?;
    }
    mark_pending(conn, id).await
}

async fn mark_pending(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE lora_models SET search_terms_version = 0 WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The terms of every query word, or `None` when the terms cannot answer this search (see
/// `crate::terms`); then the full-text index does.
pub(super) async fn plan(
    conn: &mut PgConnection,
    query: &LoraQuery,
    words: &[String],
) -> Result<Option<TermSearch>> {
    if !TermSearch::answers(query) {
        return Ok(None);
    }
    let mut per_word = Vec::with_capacity(words.len());
    for w in words {
        let terms = match crate::terms::lookup(w) {
            None => return Ok(None),
            Some(WordLookup::Term(t)) => vec![t],
            Some(WordLookup::Expand(p)) => {
                sqlx::query_scalar(
                    "SELECT word FROM lora_search_words WHERE word >= $1 AND word < $2 \
                     ORDER BY word LIMIT $3",
                )
                .bind(&p)
                .bind(prefix_end(&p))
                .bind(i64::try_from(MAX_EXPANSION + 1).unwrap_or(i64::MAX))
                .fetch_all(&mut *conn)
                .await?
            }
        };
        if terms.len() > MAX_EXPANSION {
            return Ok(None);
        }
        per_word.push((w.as_str(), terms));
    }
    Ok(Some(TermSearch::new(per_word)))
}

/// One entry stream of the driving word's term `t`, keeping LoRAs that every other word matches
/// too (a primary-key lookup per other word and term).
fn push_branch(qb: &mut QueryBuilder<Postgres>, term: &str, search: &TermSearch, sort: LoraSort) {
    let _ = sort; // Postgres picks the index of the ORDER BY.
    qb.push(
        "SELECT t.lora_id, t.usage_count, t.created_at FROM lora_search_terms t WHERE t.term = ",
    )
    .push_bind(term.to_owned());
    for others in search.others() {
        qb.push(" AND EXISTS (SELECT 1 FROM lora_search_terms o WHERE o.term IN (");
        let mut list = qb.separated(", ");
        for o in others {
            list.push_bind(o.clone());
        }
        qb.push(
            ") AND o.usage_count = t.usage_count AND o.created_at = t.created_at AND o.lora_id = t.lora_id)",
        );
    }
}

fn order_by(sort: LoraSort, alias: &str) -> String {
    let id = if alias == "m." { "id" } else { "lora_id" };
    match sort {
        LoraSort::Recent => format!(" ORDER BY {alias}created_at DESC, {alias}{id} DESC"),
        _ => format!(" ORDER BY {alias}usage_count DESC, {alias}created_at DESC, {alias}{id} DESC"),
    }
}

/// A search answered from the terms: count the matching entries (at most the cap + 1), then take
/// the page's ids from the driving word's terms in the sort order, merged, and read those rows.
pub(super) async fn search(
    conn: &mut PgConnection,
    query: &LoraQuery,
    search: &TermSearch,
) -> Result<Page<LoraSummary>> {
    let driving = search.driving();
    if driving.is_empty() {
        return Ok(Page {
            items: Vec::new(),
            total: 0,
            total_exact: true,
        });
    }
    let cap = i64::try_from(SEARCH_TOTAL_CAP + 1).unwrap_or(i64::MAX);
    let mut qb = QueryBuilder::<Postgres>::new("SELECT count(*) FROM (");
    for (i, term) in driving.iter().enumerate() {
        if i > 0 {
            // UNION: a LoRA with two words under the prefix counts once.
            qb.push(" UNION ");
        }
        push_branch(&mut qb, term, search, query.sort);
    }
    qb.push(" LIMIT ").push_bind(cap).push(") c");
    let counted: i64 = qb.build_query_scalar().fetch_one(&mut *conn).await?;
    let (total, total_exact) = capped_total(counted, SEARCH_TOTAL_CAP)?;
    if total_exact && total <= query.offset {
        return Ok(Page {
            items: Vec::new(),
            total,
            total_exact,
        });
    }

    let offset = i64::try_from(query.offset).unwrap_or(i64::MAX);
    let wanted = offset.saturating_add(i64::from(query.limit));
    let mut qb = QueryBuilder::<Postgres>::new(
        "SELECT m.id, m.user_id, u.email, u.display_name, m.name, m.description, \
         m.training_status, m.usage_count, m.created_at FROM (",
    );
    if driving.len() == 1 {
        push_branch(&mut qb, &driving[0], search, query.sort);
    } else {
        // Each term's first `offset + limit` entries in order, merged without duplicates.
        qb.push("SELECT * FROM (");
        for (i, term) in driving.iter().enumerate() {
            if i > 0 {
                qb.push(" UNION ");
            }
            qb.push("SELECT * FROM (");
            push_branch(&mut qb, term, search, query.sort);
            qb.push(order_by(query.sort, "t."))
                .push(" LIMIT ")
                .push_bind(wanted)
                .push(") b");
        }
        qb.push(") u");
    }
    qb.push(order_by(query.sort, ""))
        .push(" LIMIT ")
        .push_bind(i64::from(query.limit))
        .push(" OFFSET ")
        .push_bind(offset)
        .push(") p JOIN lora_models m ON m.id = p.lora_id LEFT JOIN users u ON u.id = m.user_id")
        .push(order_by(query.sort, "m."));
    let rows = qb.build().fetch_all(&mut *conn).await?;
    Ok(Page {
        items: rows
            .iter()
            .map(|r| summary_record(r)?.into_summary())
            .collect::<Result<_>>()?,
        total,
        total_exact,
    })
}

/// Indexes, when the repository connects, every LoRA written before migration 0008 or by an
/// older build, under the write lock.
pub(super) async fn index_all(pool: &sqlx::PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    let n = index_pending(&mut tx).await?;
    tx.commit().await?;
    if n > 0 {
        tracing::info!(
            loras = n,
            "search terms indexed for LoRAs stored without them"
        );
    }
    Ok(())
}
