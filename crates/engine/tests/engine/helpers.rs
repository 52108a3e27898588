//! Databases, clocks, LoRAs, local backends and bounded waits for the engine's tests.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use loraforge_db::postgres::PgRepository;
use loraforge_db::sqlite::SqliteRepository;
use loraforge_db::test_support::TestDatabase;
use loraforge_db::{ConnectOptions, CreateOutcome, MonthlyPolicy, NewLora, Repository};
use loraforge_domain::{
    Dataset, DatasetId, DatasetImage, ImageFormat, LoraId, LoraModel, LoraName, ManualClock, MonthlyWindow,
    TrainingParams, TrainingStatus, UserId,
};
use loraforge_engine::backends::{LocalBackend, LocalBackendSettings};
use loraforge_engine::{Engine, EngineSettings, TickReport, TrainingBackend};

pub type Repo = Arc<dyn Repository>;

pub fn start_time() -> DateTime<Utc> {
    "2026-11-23T10:00:00Z".parse().expect("timestamp")
}

/// A database for one test, kept alive as long as this is.
pub struct Db {
    pub repo: Repo,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    _pg: Option<TestDatabase>,
}

impl Db {
    pub async fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("engine.db").display());
        let repo = SqliteRepository::connect(&url, &ConnectOptions { max_connections: 8 }).await.expect("SQLite");
        Db { repo: Arc::new(repo), clock: Arc::new(ManualClock::new(start_time())), dir, _pg: None }
    }

    /// A fresh database on the Postgres named by `LORAFORGE_TEST_POSTGRES_URL`; fails, never
    /// skips, when there is none.
    pub async fn postgres() -> Db {
        let pg = TestDatabase::create().await;
        let repo = PgRepository::connect(pg.url(), &ConnectOptions { max_connections: 10 }).await.expect("Postgres");
        Db {
            repo: Arc::new(repo),
            clock: Arc::new(ManualClock::new(start_time())),
            dir: tempfile::tempdir().expect("temp dir"),
            _pg: Some(pg),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        loraforge_domain::Clock::now(&*self.clock)
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(chrono::Duration::from_std(by).expect("duration"));
    }

    pub fn engine(&self, backends: Vec<Arc<dyn TrainingBackend>>, settings: EngineSettings) -> Engine {
        Engine::new(self.repo.clone(), self.clock.clone(), backends, settings)
    }

    /// A user with a two-image dataset.
    pub async fn user(&self) -> (UserId, DatasetId) {
        let user = UserId::new();
        let image = |index: u32| DatasetImage {
            index,
            file_name: format!("{index}.png"),
            format: ImageFormat::Png,
            width: 1024,
            height: 1024,
            bytes: 200_000,
            content_hash: format!("{index:064x}"),
            storage_key: format!("datasets/{user}/{index}.png"),
            caption: Some(format!("ohwx person, photo {index}")),
        };
        let d =
            Dataset { id: DatasetId::new(), user_id: user, images: vec![image(0), image(1)], created_at: self.now() };
        self.repo.insert_dataset(&d).await.expect("dataset");
        (user, d.id)
    }

    /// A pending LoRA created `offset_s` seconds after the start time (creation order = queue order).
    pub async fn lora(&self, (owner, dataset): (UserId, DatasetId), name: &str, offset_s: i64) -> LoraId {
        let created = start_time() + chrono::Duration::seconds(offset_s);
        let new = NewLora {
            id: LoraId::new(),
            owner,
            owner_email: None,
            name: LoraName::parse(name).expect("name"),
            description: None,
            dataset_id: dataset,
            params: TrainingParams::default(),
            idempotency: None,
            now: created,
        };
        let policy = MonthlyPolicy { limit: 1000, window: MonthlyWindow::containing(created) };
        match self.repo.create_lora(new, policy).await.expect("create") {
            CreateOutcome::Created(l) => l.id,
            other => panic!("expected a new LoRA, got {other:?}"),
        }
    }

    pub async fn get(&self, id: LoraId) -> LoraModel {
        self.repo.get_lora(id).await.expect("get").expect("exists")
    }

    pub async fn status(&self, id: LoraId) -> TrainingStatus {
        self.get(id).await.status
    }

    /// The local backend running the fake worker with `env`.
    pub fn local(&self, max_concurrent: usize, env: &[(&str, &str)]) -> Arc<LocalBackend> {
        Arc::new(LocalBackend::new(local_settings(self.dir.path().join("runs"), max_concurrent, env)))
    }
}

pub fn fake_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_worker.sh")
}

pub fn local_settings(work_dir: PathBuf, max_concurrent: usize, env: &[(&str, &str)]) -> LocalBackendSettings {
    let mut s = LocalBackendSettings::new(fake_worker(), work_dir);
    s.max_concurrent = max_concurrent;
    s.kill_grace = Duration::from_secs(5);
    s.env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    s
}

/// A worker that trains "forever" (until stopped).
pub const LONG_RUN: &[(&str, &str)] = &[("FAKE_STEPS", "100000"), ("FAKE_STEP_SECONDS", "0.05")];

pub fn settings(worker_id: &str) -> EngineSettings {
    EngineSettings { worker_id: worker_id.to_owned(), ..EngineSettings::default() }
}

/// How long a test waits for a child process to do something before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it holds or `DEADLINE` passes (then panics with `what`).
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ticks `engine` (without moving the clock) until `done` holds for the accumulated reports.
pub async fn tick_until(
    engine: &Engine,
    what: &str,
    mut done: impl AsyncFnMut(&[TickReport]) -> bool,
) -> Vec<TickReport> {
    let start = Instant::now();
    let mut reports = Vec::new();
    loop {
        reports.push(engine.tick().await.expect("tick"));
        if done(&reports).await {
            return reports;
        }
        assert!(start.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}; reports: {reports:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Worker tokens that say what they were issued for.
#[derive(Debug)]
pub struct FixedTokens;

impl loraforge_engine::WorkerTokens for FixedTokens {
    fn issue(&self, lora: LoraId, attempt: u32, worker_id: &str) -> Result<String, String> {
        Ok(format!("token-{lora}-{attempt}-{worker_id}"))
    }
}
