//! Migration 0006 on a library that predates it: LoRAs stored without a name key (as every row
//! was before), some of whose names collide only by key (the old index compared names exactly),
//! get keys when the repository connects; the oldest keeps the name, the others keep their LoRAs.

use std::future::Future;
use std::sync::Arc;

use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};

use loraforge_db::postgres::PgRepository;
use loraforge_db::sqlite::SqliteRepository;
use loraforge_db::{ConnectOptions, DbError};

use crate::helpers::{Repo, at, create, new_lora, policy, user, with_postgres_database};

/// `open` connects a repository (running migrations and the backfill); `exec` runs raw SQL on
/// the same database, standing in for the state before migration 0006.
async fn keys_are_filled_in_at_connect<O, OF, E, EF>(open: O, exec: E)
where
    O: Fn() -> OF,
    OF: Future<Output = Repo>,
    E: Fn(String) -> EF,
    EF: Future<Output = ()>,
{
    let repo = open().await;
    let (owner, ds) = user(&repo).await;
    let t = |m: u32| at(&format!("2026-11-15T12:{m:02}:00Z"));
    let cat = create(&repo, new_lora(owner, ds, "Cat", t(1))).await;
    let upper = create(&repo, new_lora(owner, ds, "Old Name", t(2))).await;
    let hidden = create(&repo, new_lora(owner, ds, "Another", t(3))).await;
    // Before 0006: no keys, and names the old exact-name index let through.
    exec("UPDATE lora_models SET name_key = NULL".into()).await;
    exec(format!(
        "UPDATE lora_models SET name = 'CAT' WHERE id = '{}'",
        upper.id
    ))
    .await;
    exec(format!(
        "UPDATE lora_models SET name = 'Ca\u{200b}t' WHERE id = '{}'",
        hidden.id
    ))
    .await;

    let repo = open().await;
    let now = t(10);
    for same in ["cat", "CAT", "Ｃａｔ"] {
        let again = repo
            .create_lora(new_lora(owner, ds, same, now), policy(100, now))
            .await;
        assert!(
            matches!(again, Err(DbError::DuplicateName(ref n)) if n == "Cat"),
            "the oldest LoRA holds the name: {same:?} → {again:?}"
        );
    }
    for (id, name) in [
        (cat.id, "Cat"),
        (upper.id, "CAT"),
        (hidden.id, "Ca\u{200b}t"),
    ] {
        let kept = repo.get_lora(id).await.expect("get").expect("kept");
        assert_eq!(kept.name.as_str(), name);
    }
    // The renamed LoRAs gave up their old names' keys.
    create(&repo, new_lora(owner, ds, "old name", now)).await;
    create(&repo, new_lora(owner, ds, "another", now)).await;
    // Connecting again finds nothing to do.
    let repo = open().await;
    let again = repo
        .create_lora(new_lora(owner, ds, "OLD NAME", now), policy(100, now))
        .await;
    assert!(
        matches!(again, Err(DbError::DuplicateName(ref n)) if n == "old name"),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_backfills_name_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
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
    keys_are_filled_in_at_connect(open, exec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_backfills_name_keys() {
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
        keys_are_filled_in_at_connect(open, exec).await;
    })
    .await
}
