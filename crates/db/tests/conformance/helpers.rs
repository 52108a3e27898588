//! Engines and fixtures for the conformance stories: a temp-file SQLite database or a fresh
//! Postgres database per test, and small builders for datasets and LoRAs.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use loraforge_db::postgres::PgRepository;
use loraforge_db::sqlite::SqliteRepository;
use loraforge_db::{
    ConnectOptions, CreateOutcome, DbError, EventDetail, IdempotencyKey, LibraryRow, MonthlyPolicy,
    NewLora, Repository, redact_url,
};
use loraforge_domain::{
    Dataset, DatasetId, DatasetImage, ImageFormat, LoraId, LoraModel, LoraName, MonthlyWindow,
    StatusEvent, TrainingParams, TrainingStatus, UserId,
};

pub type Repo = Arc<dyn Repository>;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs `story` against a fresh SQLite file in a temp dir.
pub async fn run_sqlite<F, Fut>(story: F)
where
    F: FnOnce(Repo) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("conformance.db").display());
    let repo = Arc::new(
        SqliteRepository::connect(&url, &ConnectOptions { max_connections: 8 })
            .await
            .expect("open SQLite"),
    );
    let result = AssertUnwindSafe(story(repo.clone() as Repo))
        .catch_unwind()
        .await;
    repo.close().await;
    if let Err(panic) = result {
        resume_unwind(panic);
    }
}

/// Runs `story` against a database of its own on the Postgres server named by
/// `LORAFORGE_TEST_POSTGRES_URL`, dropped afterwards. An unreachable server fails the test.
pub async fn run_postgres<F, Fut>(story: F)
where
    F: FnOnce(Repo) -> Fut,
    Fut: Future<Output = ()>,
{
    with_postgres_database(|url| async move {
        let repo = Arc::new(
            PgRepository::connect(
                &url,
                &ConnectOptions {
                    max_connections: 10,
                },
            )
            .await
            .expect("connect to test database"),
        );
        let result = AssertUnwindSafe(story(repo.clone() as Repo))
            .catch_unwind()
            .await;
        repo.close().await;
        if let Err(panic) = result {
            resume_unwind(panic);
        }
    })
    .await
}

/// Runs `story` with the URL of a fresh, empty database on the test Postgres server, dropped
/// afterwards (even when the story panics).
pub async fn with_postgres_database<F, Fut>(story: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin_url = std::env::var("LORAFORGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {} ({e}). Start it, or set LORAFORGE_TEST_POSTGRES_URL to a server \
             this test may create databases on; the postgres conformance tests never skip themselves",
            redact_url(&admin_url)
        )
    });
    let name = format!("lf_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let url = database_url(&admin_url, &name);
    let result = AssertUnwindSafe(story(url)).catch_unwind().await;
    // Best effort: FORCE ends connections a panicking story left behind.
    let _ = sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    let _ = admin.close().await;
    if let Err(panic) = result {
        resume_unwind(panic);
    }
}

/// `admin` with its database name replaced by `name` (query parameters kept).
pub fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

pub fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("RFC 3339 timestamp")
}

/// "Now" in most stories: mid-November 2026.
pub fn now() -> DateTime<Utc> {
    at("2026-11-15T12:00:00Z")
}

pub fn policy(limit: u32, now: DateTime<Utc>) -> MonthlyPolicy {
    MonthlyPolicy {
        limit,
        window: MonthlyWindow::containing(now),
    }
}

pub fn name(s: &str) -> LoraName {
    LoraName::parse(s).expect("valid name")
}

pub fn image(index: u32) -> DatasetImage {
    DatasetImage {
        index,
        file_name: format!("img{index}.png"),
        format: if index.is_multiple_of(2) {
            ImageFormat::Png
        } else {
            ImageFormat::Jpeg
        },
        width: 1024 + index,
        height: 768,
        bytes: 150_000 + u64::from(index),
        content_hash: format!("{index:064x}"),
        storage_key: format!("datasets/x/{index}.png"),
        caption: (!index.is_multiple_of(2)).then(|| format!("caption {index}")),
    }
}

/// Stores a three-image dataset of `owner` and returns its id.
pub async fn dataset(repo: &Repo, owner: UserId) -> DatasetId {
    let d = Dataset {
        id: DatasetId::new(),
        user_id: owner,
        images: (0..3).map(image).collect(),
        created_at: now(),
    };
    repo.insert_dataset(&d).await.expect("insert dataset");
    d.id
}

pub fn new_lora(owner: UserId, dataset: DatasetId, lora_name: &str, now: DateTime<Utc>) -> NewLora {
    NewLora {
        id: LoraId::new(),
        owner,
        owner_email: Some(format!("{}@example.com", &owner.to_string()[..8])),
        name: name(lora_name),
        description: None,
        dataset_id: dataset,
        params: TrainingParams::default(),
        idempotency: None,
        reserve: None,
        webhook: None,
        now,
        character_id: None,
        triggered_by_job_id: None,
    }
}

pub fn with_key(mut new: NewLora, key: &str, hash: &str) -> NewLora {
    new.idempotency = Some(IdempotencyKey {
        key: key.to_owned(),
        request_hash: hash.to_owned(),
    });
    new
}

/// Creates a LoRA that must be created (limit far away).
pub async fn create(repo: &Repo, new: NewLora) -> LoraModel {
    let now = new.now;
    match repo.create_lora(new, policy(1_000, now)).await {
        Ok(CreateOutcome::Created(l)) => l,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// A fresh user with a dataset.
pub async fn user(repo: &Repo) -> (UserId, DatasetId) {
    let u = UserId::new();
    let d = dataset(repo, u).await;
    (u, d)
}

pub async fn apply(
    repo: &Repo,
    id: LoraId,
    event: StatusEvent,
    now: DateTime<Utc>,
) -> Result<LoraModel, DbError> {
    repo.apply_event(id, event, EventDetail::default(), now)
        .await
}

/// Events that take a new LoRA (pending) to `status`.
pub fn path_to(status: TrainingStatus) -> &'static [StatusEvent] {
    use StatusEvent as E;
    match status {
        TrainingStatus::Pending => &[],
        TrainingStatus::Queued => &[E::Enqueue],
        TrainingStatus::Training => &[E::Enqueue, E::Start],
        TrainingStatus::Validating => &[E::Enqueue, E::Start, E::BeginValidation],
        TrainingStatus::Completed => &[E::Enqueue, E::Start, E::BeginValidation, E::Complete],
        TrainingStatus::Failed => &[E::Fail],
        TrainingStatus::Cancelled => &[E::Cancel],
    }
}

/// Moves a LoRA along `path_to(status)`.
pub async fn drive(
    repo: &Repo,
    id: LoraId,
    status: TrainingStatus,
    now: DateTime<Utc>,
) -> LoraModel {
    let mut last = repo.get_lora(id).await.unwrap().expect("LoRA exists");
    for ev in path_to(status) {
        last = apply(repo, id, *ev, now)
            .await
            .unwrap_or_else(|e| panic!("{ev:?}: {e}"));
    }
    assert_eq!(last.status, status);
    last
}

/// A library row for `bulk_insert_library`.
#[allow(clippy::too_many_arguments)]
pub fn row(
    owner: UserId,
    email: Option<&str>,
    dataset: DatasetId,
    lora_name: &str,
    description: Option<&str>,
    status: TrainingStatus,
    usage_count: u64,
    created_at: DateTime<Utc>,
) -> LibraryRow {
    LibraryRow {
        id: LoraId::new(),
        owner,
        owner_email: email.map(str::to_owned),
        name: name(lora_name),
        description: description.map(str::to_owned),
        dataset_id: dataset,
        params: TrainingParams::default(),
        status,
        usage_count,
        created_at,
    }
}
