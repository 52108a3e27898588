//! The search terms on SQLite (`crate::terms`, migration 0008): indexing LoRAs' terms in the
//! transaction that writes them, and answering a search from the terms in the sort order.

use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use loraforge_domain::{LoraSort, LoraSummary};

use super::rows::summary_record;
use crate::common::capped_total;
use crate::terms::{MAX_EXPANSION, TERMS_VERSION, TermSearch, WordLookup, index_terms, prefix_end};
use crate::{LoraQuery, Page, Result, SEARCH_TOTAL_CAP};

/// Rows indexed per round of [`index_pending`]; entries are inserted this many at a time.
const BATCH: i64 = 1_000;
const INSERT_CHUNK: usize = 2_000;

/// Indexes every LoRA whose `search_terms_version` is behind [`TERMS_VERSION`]: inside a write
/// transaction, right after the writes that left them so (inserts, a changed description), and
/// when the repository connects (rows an older build wrote). Returns how many it indexed.
pub(super) async fn index_pending(conn: &mut SqliteConnection) -> Result<u64> {
    let mut indexed = 0;
    loop {
        let rows = sqlx::query(
            "SELECT seq, id, name, description, usage_count, created_at FROM lora_models \
             WHERE search_terms_version < $1 ORDER BY search_terms_version LIMIT $2",
        )
        .bind(TERMS_VERSION)
        .bind(BATCH)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            return Ok(indexed);
        }
        let mut entries: Vec<(String, i64, String, String)> = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get("name")?;
            let description: Option<String> = row.try_get("description")?;
            let usage: i64 = row.try_get("usage_count")?;
            let created: String = row.try_get("created_at")?;
            let id: String = row.try_get("id")?;
            let t = index_terms(&name, description.as_deref());
            entries.extend(
                t.terms
                    .into_iter()
                    .map(|term| (term, usage, created.clone(), id.clone())),
            );
            words.extend(t.words);
            seqs.push(row.try_get("seq")?);
        }
        words.sort();
        words.dedup();
        for chunk in entries.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT OR IGNORE INTO lora_search_terms (term, usage_count, created_at, id) ",
            );
            qb.push_values(chunk, |mut b, (term, usage, created, id)| {
                b.push_bind(term)
                    .push_bind(usage)
                    .push_bind(created)
                    .push_bind(id);
            });
            qb.build().execute(&mut *conn).await?;
        }
        for chunk in words.chunks(INSERT_CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT OR IGNORE INTO lora_search_words (word) ");
            qb.push_values(chunk, |mut b, w| {
                b.push_bind(w);
            });
            qb.build().execute(&mut *conn).await?;
        }
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE lora_models SET search_terms_version = ");
        qb.push_bind(TERMS_VERSION).push(" WHERE seq IN (");
        let mut list = qb.separated(", ");
        for s in &seqs {
            list.push_bind(s);
        }
        qb.push(")");
        qb.build().execute(&mut *conn).await?;
        indexed += seqs.len() as u64;
    }
}

/// Removes the entries of the LoRA `id` as its current name and description gave them and marks
/// it for [`index_pending`]; call before changing either, in the same transaction.
pub(super) async fn unindex(conn: &mut SqliteConnection, id: &str) -> Result<()> {
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
    let version: i64 = row.try_get("search_terms_version")?;
    if version > 0 {
        let name: String = row.try_get("name")?;
        let description: Option<String> = row.try_get("description")?;
        let terms = index_terms(&name, description.as_deref()).terms;
        if terms.is_empty() {
            // `IN ()` is not SQL everywhere; nothing to remove anyway.
            return mark_pending(conn, id).await;
        }
        let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM lora_search_terms WHERE term IN (");
        let mut list = qb.separated(", ");
        for t in &terms {
            list.push_bind(t);
        }
        qb.push(") AND usage_count = ")
            .push_bind(row.try_get::<i64, _>("usage_count")?)
            .push(" AND created_at = ")
            .push_bind(row.try_get::<String, _>("created_at")?)
            .push(" AND id = ")
            .push_bind(id);
        qb.build().execute(&mut *conn).await?;
    }
    mark_pending(conn, id).await
}

async fn mark_pending(conn: &mut SqliteConnection, id: &str) -> Result<()> {
    sqlx::query("UPDATE lora_models SET search_terms_version = 0 WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The terms of every query word, or `None` when the terms cannot answer this search (see
/// `crate::terms`); then the full-text index does.
pub(super) async fn plan(
    conn: &mut SqliteConnection,
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
fn push_branch(qb: &mut QueryBuilder<Sqlite>, term: &str, search: &TermSearch, sort: LoraSort) {
    qb.push(match sort {
        LoraSort::Recent => {
            "SELECT t.id, t.usage_count, t.created_at FROM lora_search_terms t \
             INDEXED BY lora_search_terms_recent WHERE t.term = "
        }
        _ => "SELECT t.id, t.usage_count, t.created_at FROM lora_search_terms t WHERE t.term = ",
    })
    .push_bind(term.to_owned());
    for others in search.others() {
        qb.push(" AND EXISTS (SELECT 1 FROM lora_search_terms o WHERE o.term IN (");
        let mut list = qb.separated(", ");
        for o in others {
            list.push_bind(o.clone());
        }
        qb.push(
            ") AND o.usage_count = t.usage_count AND o.created_at = t.created_at AND o.id = t.id)",
        );
    }
}

fn order_by(sort: LoraSort, alias: &str) -> String {
    match sort {
        LoraSort::Recent => format!(" ORDER BY {alias}created_at DESC, {alias}id DESC"),
        _ => format!(" ORDER BY {alias}usage_count DESC, {alias}created_at DESC, {alias}id DESC"),
    }
}

/// A search answered from the terms: count the matching entries (at most the cap + 1), then take
/// the page's ids from the driving word's terms in the sort order, merged, and read those rows.
pub(super) async fn search(
    conn: &mut SqliteConnection,
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
    let mut qb = QueryBuilder::<Sqlite>::new("SELECT count(*) FROM (");
    for (i, term) in driving.iter().enumerate() {
        if i > 0 {
            // UNION: a LoRA with two words under the prefix counts once.
            qb.push(" UNION ");
        }
        push_branch(&mut qb, term, search, query.sort);
    }
    qb.push(" LIMIT ").push_bind(cap).push(")");
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
    let mut qb = QueryBuilder::<Sqlite>::new(
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
                .push(")");
        }
        qb.push(")");
    }
    qb.push(order_by(query.sort, ""))
        .push(" LIMIT ")
        .push_bind(i64::from(query.limit))
        .push(" OFFSET ")
        .push_bind(offset)
        .push(") p CROSS JOIN lora_models m ON m.id = p.id LEFT JOIN users u ON u.id = m.user_id")
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
pub(super) async fn index_all(pool: &sqlx::SqlitePool) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
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
