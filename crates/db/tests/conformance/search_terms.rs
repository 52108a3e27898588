//! Migration 0008's search terms: a search sorted by popularity or recency is answered from
//! `lora_search_terms`, one sorted by name (and every filtered search) from the full-text index.
//! Both must give the library's own order filtered by the word-prefix rule, and the same totals;
//! LoRAs stored before the terms existed (or by an older build) are indexed when the repository
//! connects and with the next write.

use std::future::Future;
use std::sync::Arc;

use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};

use loraforge_db::postgres::PgRepository;
use loraforge_db::sqlite::SqliteRepository;
use loraforge_db::{ConnectOptions, LoraQuery, SEARCH_TOTAL_CAP};
use loraforge_domain::{LoraSort, LoraSummary};

use crate::helpers::{Repo, create, new_lora, now, row, user, with_postgres_database};

/// The words of a text as a search splits them: runs of letters and digits, lowercased.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether every word of `search` begins some word of the LoRA's name or description.
fn matches(s: &LoraSummary, search: &str) -> bool {
    let mut own = words(&s.name);
    own.extend(s.description.as_deref().map(words).unwrap_or_default());
    words(search)
        .iter()
        .all(|q| own.iter().any(|w| w.starts_with(q.as_str())))
}

async fn whole_library(repo: &Repo, sort: LoraSort) -> Vec<LoraSummary> {
    let mut all = Vec::new();
    loop {
        let page = repo
            .list_loras(&LoraQuery {
                sort,
                limit: 100,
                offset: all.len() as u64,
                ..Default::default()
            })
            .await
            .expect("list");
        if page.items.is_empty() {
            return all;
        }
        all.extend(page.items);
    }
}

/// A seeded library (made-up words, skewed usage counts, times spread over a year) plus rows
/// whose words share long prefixes: every search, in every sort and at several offsets, is the
/// sorted library filtered by the prefix rule, with the same total in every sort.
pub async fn term_search_is_the_sorted_library_filtered(repo: Repo) {
    let seeded = loraforge_db::seed::seed_library(repo.as_ref(), 1_500, 12, 42)
        .await
        .expect("seed");
    let (u, d) = user(&repo).await;
    let t = now() - chrono::Duration::days(3);
    let extra = vec![
        row(
            u,
            None,
            d,
            "Zorbaxel zorbaqua",
            Some("twice under zorba"),
            loraforge_domain::TrainingStatus::Completed,
            7,
            t,
        ),
        row(
            u,
            None,
            d,
            "Zorbaqua only",
            None,
            loraforge_domain::TrainingStatus::Completed,
            7,
            t,
        ),
        row(
            u,
            None,
            d,
            "zorbaxel",
            Some("same time, same uses"),
            loraforge_domain::TrainingStatus::Failed,
            7,
            t,
        ),
        row(
            u,
            None,
            d,
            "Zo",
            Some("x y"),
            loraforge_domain::TrainingStatus::Completed,
            0,
            t,
        ),
    ];
    repo.bulk_insert_library(extra).await.expect("extra rows");

    let mut searches: Vec<String> = Vec::new();
    for w in seeded.vocabulary.iter().take(12) {
        for k in 2..=w.chars().count() {
            searches.push(w.chars().take(k).collect());
        }
    }
    let v = &seeded.vocabulary;
    searches.extend(
        [
            "zo",
            "zor",
            "zorb",
            "zorba",
            "zorbax",
            "zorbaqua",
            "zorbaxel",
            "zorbaxelz",
            "zorba twice",
            "zorbaq zorbax",
            "x",
            "zo x",
            "under tw",
            "nothingmatches",
        ]
        .map(str::to_owned),
    );
    searches.push(format!("{} {}", &v[0][..3], &v[1][..2]));
    searches.push(format!("{} {}", v[2], &v[3][..4]));

    for sort in [LoraSort::Popular, LoraSort::Recent, LoraSort::Name] {
        let library = whole_library(&repo, sort).await;
        assert_eq!(library.len(), 1_504);
        for search in &searches {
            let expected: Vec<_> = library
                .iter()
                .filter(|s| matches(s, search))
                .map(|s| s.id)
                .collect();
            let total = (expected.len() as u64).min(SEARCH_TOTAL_CAP);
            for (offset, limit) in [(0u64, 50u32), (0, 1), (3, 7), (40, 100)] {
                let page = repo
                    .list_loras(&LoraQuery {
                        search: Some(search.clone()),
                        sort,
                        offset,
                        limit,
                        ..Default::default()
                    })
                    .await
                    .expect("search");
                let want: Vec<_> = expected
                    .iter()
                    .skip(offset as usize)
                    .take(limit as usize)
                    .copied()
                    .collect();
                let got: Vec<_> = page.items.iter().map(|s| s.id).collect();
                assert_eq!(
                    got, want,
                    "{search:?} {sort:?} offset {offset} limit {limit}"
                );
                assert_eq!(
                    (page.total, page.total_exact),
                    (total, expected.len() as u64 <= SEARCH_TOTAL_CAP),
                    "{search:?} {sort:?} total"
                );
            }
        }
    }
}

/// `open` connects a repository (migrations, backfills); `exec` runs raw SQL on its database,
/// standing in for rows an older build wrote.
async fn terms_are_filled_in_at_connect_and_with_writes<O, OF, E, EF>(open: O, exec: E)
where
    O: Fn() -> OF,
    OF: Future<Output = Repo>,
    E: Fn(String) -> EF,
    EF: Future<Output = ()>,
{
    let repo = open().await;
    let (owner, ds) = user(&repo).await;
    let mut old = new_lora(owner, ds, "Quokka Portrait", now());
    old.description = Some("a smiling marsupial".into());
    let old = create(&repo, old).await;
    let popular = |text: &str| LoraQuery {
        search: Some(text.to_owned()),
        sort: LoraSort::Popular,
        limit: 10,
        ..Default::default()
    };
    let found =
        |page: loraforge_db::Page<LoraSummary>| page.items.iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        found(repo.list_loras(&popular("quokk")).await.unwrap()),
        [old.id]
    );

    // As an older build leaves it: no terms.
    exec("DELETE FROM lora_search_terms".into()).await;
    exec("DELETE FROM lora_search_words".into()).await;
    exec("UPDATE lora_models SET search_terms_version = 0".into()).await;
    assert!(found(repo.list_loras(&popular("quokk")).await.unwrap()).is_empty());
    // The next write indexes it too.
    let newer = create(&repo, new_lora(owner, ds, "Quokka Sketch", now())).await;
    let both = found(repo.list_loras(&popular("quokka")).await.unwrap());
    assert_eq!(both.len(), 2, "{both:?}");

    // And connecting does.
    exec("DELETE FROM lora_search_terms".into()).await;
    exec("DELETE FROM lora_search_words".into()).await;
    exec("UPDATE lora_models SET search_terms_version = 0".into()).await;
    let repo = open().await;
    assert_eq!(
        found(repo.list_loras(&popular("marsup")).await.unwrap()),
        [old.id]
    );
    assert_eq!(
        found(repo.list_loras(&popular("sk")).await.unwrap()),
        [newer.id]
    );
    // A changed description takes its old words away and brings the new ones.
    repo.update_description(old.id, Some("wombat".into()), now())
        .await
        .unwrap();
    assert!(found(repo.list_loras(&popular("marsup")).await.unwrap()).is_empty());
    assert!(found(repo.list_loras(&popular("sm")).await.unwrap()).is_empty());
    assert_eq!(
        found(repo.list_loras(&popular("womb")).await.unwrap()),
        [old.id]
    );
    let page = repo.list_loras(&popular("quokka")).await.unwrap();
    assert_eq!((page.items.len(), page.total), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_indexes_search_terms_of_older_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("terms.db").display());
    let url = url.as_str();
    let open = || async move {
        Arc::new(
            SqliteRepository::connect(url, &ConnectOptions { max_connections: 2 })
                .await
                .expect("open SQLite"),
        ) as Repo
    };
    let exec = |sql: String| async move {
        let mut c = SqliteConnection::connect(url).await.expect("raw SQLite");
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .expect("raw SQL");
        c.close().await.expect("close");
    };
    terms_are_filled_in_at_connect_and_with_writes(open, exec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_indexes_search_terms_of_older_rows() {
    with_postgres_database(|url| async move {
        let url = url.as_str();
        let open = || async move {
            Arc::new(
                PgRepository::connect(url, &ConnectOptions { max_connections: 2 })
                    .await
                    .expect("connect"),
            ) as Repo
        };
        let exec = |sql: String| async move {
            let mut c = PgConnection::connect(url).await.expect("raw Postgres");
            sqlx::query(AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .expect("raw SQL");
            c.close().await.expect("close");
        };
        terms_are_filled_in_at_connect_and_with_writes(open, exec).await;
    })
    .await
}
