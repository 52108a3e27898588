//! Library search on a 100,000-LoRA library: seeding speed, the query plan, and latency.
//! Ignored by default (it seeds 100k rows); run with
//! `cargo test -p loraforge-db --test search_perf -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, Row, SqliteConnection};

use loraforge_db::seed::seed_library;
use loraforge_db::sqlite::SqliteRepository;
use loraforge_db::{ConnectOptions, LoraQuery, Repository};
use loraforge_domain::{LoraSort, TrainingStatus};

const ROWS: usize = 100_000;

fn rows() -> usize {
    std::env::var("LORAFORGE_PERF_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROWS)
}

async fn plan(conn: &mut SqliteConnection, sql: &'static str) -> String {
    let rows = sqlx::query(sql).fetch_all(conn).await.unwrap();
    rows.iter()
        .map(|r| r.get::<String, _>("detail"))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

async fn measure(repo: &dyn Repository, words: &[String]) -> (Duration, u64) {
    let mut samples = Vec::new();
    let mut matched = 0;
    for (i, w) in words.iter().enumerate() {
        // One word, and a two-word prefix query, alternately; sort by popularity.
        let search = if i % 2 == 0 {
            w.clone()
        } else {
            format!("{} {}", &w[..3], &words[(i * 7) % words.len()][..3])
        };
        let query = LoraQuery {
            search: Some(search),
            status: (i % 3 == 0).then_some(TrainingStatus::Completed),
            sort: LoraSort::Popular,
            limit: 20,
            ..Default::default()
        };
        let start = Instant::now();
        let page = repo.list_loras(&query).await.unwrap();
        samples.push(start.elapsed());
        matched += page.total;
    }
    (p99(samples), matched / words.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "seeds 100,000 rows; run explicitly"]
async fn sqlite_search_on_100k_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf.db");
    let url = format!("sqlite://{}", path.display());
    let repo = Arc::new(
        SqliteRepository::connect(&url, &ConnectOptions::default())
            .await
            .unwrap(),
    );

    let start = Instant::now();
    let seeded = seed_library(repo.as_ref(), rows(), 500, 42).await.unwrap();
    let seeding = start.elapsed();
    println!("seeded {} LoRAs", rows());
    println!("in in {seeding:?}");
    assert!(
        seeding < Duration::from_secs(60),
        "seeding took {seeding:?}"
    );
    let all = repo
        .list_loras(&LoraQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.total, rows() as u64);

    // The plan: the FTS index drives the search; the popular sort without search walks an index.
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    let search_plan = plan(&mut conn,
        "EXPLAIN QUERY PLAN SELECT m.id FROM lora_models_fts f CROSS JOIN lora_models m ON m.seq = f.rowid \
         LEFT JOIN users u ON u.id = m.user_id WHERE lora_models_fts MATCH '\"kax\"*' AND m.training_status = 'completed' \
         ORDER BY m.usage_count DESC, m.created_at DESC, m.id DESC LIMIT 20",
    )
    .await;
    println!("search plan: {search_plan}");
    assert!(search_plan.contains("VIRTUAL TABLE INDEX"), "{search_plan}");
    assert!(!search_plan.contains("SCAN m"), "{search_plan}");
    let popular_plan = plan(
        &mut conn,
        "EXPLAIN QUERY PLAN SELECT m.id FROM lora_models m LEFT JOIN users u ON u.id = m.user_id \
         WHERE 1 = 1 ORDER BY m.usage_count DESC, m.created_at DESC, m.id DESC LIMIT 20",
    )
    .await;
    println!("popular plan: {popular_plan}");
    assert!(
        popular_plan.contains("lora_models_popular"),
        "{popular_plan}"
    );
    assert!(!popular_plan.contains("TEMP B-TREE"), "{popular_plan}");
    let status_plan = plan(
        &mut conn,
        "EXPLAIN QUERY PLAN SELECT m.id FROM lora_models m WHERE 1 = 1 AND m.training_status = 'completed' \
         ORDER BY m.usage_count DESC, m.created_at DESC, m.id DESC LIMIT 20",
    )
    .await;
    println!("status plan: {status_plan}");
    assert!(!status_plan.contains("TEMP B-TREE"), "{status_plan}");
    conn.close().await.unwrap();

    let words: Vec<String> = seeded
        .vocabulary
        .iter()
        .step_by(7)
        .take(200)
        .cloned()
        .collect();
    measure(repo.as_ref(), &words[..20]).await; // warm the cache
    let (p99, avg_total) = measure(repo.as_ref(), &words).await;
    println!("search + popular sort: p99 {p99:?}, {avg_total} matches on average");
    assert!(avg_total > 50, "words should match a few hundred rows each");
    assert!(p99 < Duration::from_millis(10), "p99 {p99:?}");

    let start = Instant::now();
    for _ in 0..50 {
        repo.list_loras(&LoraQuery {
            sort: LoraSort::Popular,
            limit: 20,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    println!(
        "unfiltered popular page + total: {:?} each",
        start.elapsed() / 50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "seeds 100,000 rows; run explicitly"]
async fn postgres_search_on_100k_is_fast() {
    use loraforge_db::postgres::PgRepository;
    use sqlx::{AssertSqlSafe, PgConnection};

    let admin_url = std::env::var("LORAFORGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin_url} ({e})"));
    let name = format!("lf_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let repo = Arc::new(
        PgRepository::connect(&url, &ConnectOptions::default())
            .await
            .unwrap(),
    );

    let start = Instant::now();
    let seeded = seed_library(repo.as_ref(), rows(), 500, 42).await.unwrap();
    println!("seeded {} LoRAs in {:?}", rows(), start.elapsed());
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query("ANALYZE lora_models")
        .execute(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT m.id FROM lora_models m LEFT JOIN users u ON u.id = m.user_id \
         WHERE TRUE AND m.search @@ to_tsquery('simple', 'kax:*') \
         ORDER BY m.usage_count DESC, m.created_at DESC, m.id DESC LIMIT 20",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    println!("search plan:\n{plan}");
    assert!(plan.contains("lora_models_search"), "{plan}");
    // What a prepared statement gets once Postgres switches to a generic plan.
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "PREPARE q(text, bigint) AS SELECT m.id FROM lora_models m LEFT JOIN users u ON u.id = m.user_id \
         WHERE TRUE AND m.search @@ to_tsquery('simple', $1) \
         ORDER BY m.usage_count DESC, m.created_at DESC, m.id DESC LIMIT $2",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let generic: Vec<String> = sqlx::query_scalar("EXPLAIN ANALYZE EXECUTE q('kax:*', 20)")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    println!("generic plan:\n{}", generic.join("\n"));
    conn.close().await.unwrap();

    let words: Vec<String> = seeded
        .vocabulary
        .iter()
        .step_by(7)
        .take(200)
        .cloned()
        .collect();
    measure(repo.as_ref(), &words[..20]).await;
    let (p99, avg_total) = measure(repo.as_ref(), &words).await;
    println!("search + popular sort: p99 {p99:?}, {avg_total} matches on average");
    repo.close().await;
    let _ = sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    assert!(p99 < Duration::from_millis(25), "p99 {p99:?}");
}
