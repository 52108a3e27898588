//! Databases, clocks, LoRAs, backends and bounded waits for the engine's tests.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use secrecy::SecretSlice;

use loraforge_checks::LoraRules;
use loraforge_db::postgres::PgRepository;
use loraforge_db::sqlite::SqliteRepository;
use loraforge_db::test_support::TestDatabase;
use loraforge_db::{ConnectOptions, CreateOutcome, MonthlyPolicy, NewLora, OpenRun, Repository};
use loraforge_domain::keys::OutputKeys;
use loraforge_domain::{
    Dataset, DatasetId, DatasetImage, ImageFormat, LoraId, LoraModel, LoraName, ManualClock,
    MicroUsd, MonthlyWindow, TrainingParams, TrainingRun, TrainingStatus, UserId,
};
use loraforge_engine::backends::{LocalBackend, LocalBackendSettings};
use loraforge_engine::{
    AfterTraining, BackendError, Ending, Engine, EngineSettings, Instance, Launch, Launched,
    Observed, Scope, Termination, TickReport, TrainingBackend, ValidationRules,
};
use loraforge_storage::BlobStore;
use loraforge_storage::local::LocalStore;

pub type Repo = Arc<dyn Repository>;

pub fn start_time() -> DateTime<Utc> {
    "2026-11-23T10:00:00Z".parse().expect("timestamp")
}

/// A database for one test, a blob store beside it, kept alive as long as this is.
pub struct Db {
    pub repo: Repo,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn BlobStore>,
    pub dir: tempfile::TempDir,
    _pg: Option<TestDatabase>,
}

fn store(dir: &std::path::Path, public: url::Url) -> Arc<dyn BlobStore> {
    let store = LocalStore::new(
        dir.join("blobs"),
        public,
        Arc::new(SecretSlice::from(vec![7u8; 32])),
    )
    .expect("store");
    Arc::new(store)
}

impl Db {
    pub async fn sqlite() -> Db {
        Self::sqlite_serving_at(url::Url::parse("http://127.0.0.1:1").expect("url")).await
    }

    /// SQLite, with the blob store's signed links pointing at `public` (a server a test runs).
    pub async fn sqlite_serving_at(public: url::Url) -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("engine.db").display());
        let repo = SqliteRepository::connect(&url, &ConnectOptions { max_connections: 8 })
            .await
            .expect("SQLite");
        Db {
            repo: Arc::new(repo),
            clock: Arc::new(ManualClock::new(start_time())),
            store: store(dir.path(), public),
            dir,
            _pg: None,
        }
    }

    /// A fresh database on the Postgres named by `LORAFORGE_TEST_POSTGRES_URL`; fails, never
    /// skips, when there is none.
    pub async fn postgres() -> Db {
        let pg = TestDatabase::create().await;
        let repo = PgRepository::connect(
            pg.url(),
            &ConnectOptions {
                max_connections: 10,
            },
        )
        .await
        .expect("Postgres");
        let dir = tempfile::tempdir().expect("temp dir");
        Db {
            repo: Arc::new(repo),
            clock: Arc::new(ManualClock::new(start_time())),
            store: store(
                dir.path(),
                url::Url::parse("http://127.0.0.1:1").expect("url"),
            ),
            dir,
            _pg: Some(pg),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        loraforge_domain::Clock::now(&*self.clock)
    }

    pub fn advance(&self, by: Duration) {
        self.clock
            .advance(chrono::Duration::from_std(by).expect("duration"));
    }

    /// An engine over this database and store; validation auto-approves (no scores).
    pub fn engine(
        &self,
        backends: Vec<Arc<dyn TrainingBackend>>,
        settings: EngineSettings,
    ) -> Engine {
        let rules = LoraRules {
            min_bytes: 0,
            max_bytes: u64::MAX,
            scan_values: true,
        };
        let after = AfterTraining::new(
            self.store.clone(),
            rules,
            ValidationRules {
                similarity_threshold: 0.7,
                auto_approve: true,
            },
        );
        Engine::new(
            self.repo.clone(),
            self.clock.clone(),
            backends,
            settings,
            after,
        )
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
        let d = Dataset {
            id: DatasetId::new(),
            user_id: user,
            images: vec![image(0), image(1)],
            created_at: self.now(),
        };
        self.repo.insert_dataset(&d).await.expect("dataset");
        (user, d.id)
    }

    /// A pending LoRA created `offset_s` seconds after the start time (creation order = queue order).
    pub async fn lora(
        &self,
        (owner, dataset): (UserId, DatasetId),
        name: &str,
        offset_s: i64,
    ) -> LoraId {
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
            reserve: None,
            webhook: None,
            now: created,
            character_id: None,
            triggered_by_job_id: None,
        };
        let policy = MonthlyPolicy {
            limit: 1000,
            window: MonthlyWindow::containing(created),
        };
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

    pub async fn runs(&self, id: LoraId) -> Vec<TrainingRun> {
        self.repo.runs_of(id).await.expect("runs")
    }

    /// The latest run of `id`.
    pub async fn run(&self, id: LoraId) -> TrainingRun {
        self.runs(id).await.pop().expect("a run")
    }

    pub async fn open(&self) -> Vec<OpenRun> {
        self.repo.open_runs().await.expect("open runs")
    }

    /// Reports, as a worker would over the API, that the latest run of `id` trained: stores a
    /// valid LoRA file, the kohya file and three validation images, and records the result.
    pub async fn report_trained(&self, id: LoraId) {
        self.report_trained_with_sha(id, None).await;
    }

    /// [`Db::report_trained`], the worker reporting `sha256` as the model file's hash.
    pub async fn report_trained_with_sha(&self, id: LoraId, sha256: Option<&str>) {
        let lora = self.get(id).await;
        let keys = OutputKeys::of(lora.creator.id, lora.id);
        let model = tiny_lora();
        self.store
            .put(&keys.model, Bytes::from(model.clone()))
            .await
            .expect("model");
        self.store
            .put(&keys.kohya, Bytes::from(model.clone()))
            .await
            .expect("kohya");
        for key in &keys.validation {
            self.store
                .put(key, Bytes::from_static(b"\x89PNG fake"))
                .await
                .expect("image");
        }
        let run = self.run(id).await;
        let result = serde_json::json!({
            "attempt": run.attempt,
            "train_seconds": 1.5,
            "trainer_seconds": 3.0,
            "model": {"bytes": model.len(), "sha256": sha256},
            "kohya": {"bytes": model.len(), "sha256": null},
            "validation": {"images": 3, "scores": null},
        });
        assert!(
            self.repo
                .record_run_outcome(run.id, "trained", None, Some(&result), self.now())
                .await
                .expect("result")
        );
    }

    /// Reports, as a worker would, that the latest run of `id` failed with `code`.
    pub async fn report_failure(&self, id: LoraId, code: &str, reason: &str) {
        let run = self.run(id).await;
        let facts = serde_json::json!({ "retryable": false });
        self.repo
            .record_run_outcome(run.id, code, Some(reason), Some(&facts), self.now())
            .await
            .expect("failure");
    }
}

/// A small LoRA file in the older diffusers convention that passes the LoRA check.
pub fn tiny_lora() -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for i in 0..2 {
        let m = format!("unet.up_blocks.{i}.attentions.0.transformer_blocks.0.attn1.to_out.0");
        for (suffix, shape) in [
            ("lora.down.weight", [4u64, 20]),
            ("lora.up.weight", [20, 4]),
        ] {
            let start = data.len() as u64;
            for j in 0..shape[0] * shape[1] {
                data.extend_from_slice(&(0x2000u16 + (j % 0x800) as u16).to_le_bytes());
            }
            header.insert(
                format!("{m}.{suffix}"),
                serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [start, data.len() as u64]}),
            );
        }
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

pub fn settings(worker_id: &str) -> EngineSettings {
    EngineSettings {
        worker_id: worker_id.to_owned(),
        ..EngineSettings::default()
    }
}

// --- a backend the tests steer -----------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct ScriptedInstance {
    pub name: String,
    pub lora: LoraId,
    pub attempt: u32,
    pub token: String,
    pub server: String,
    pub state: Observed,
    pub terminated: bool,
}

#[derive(Debug, Default)]
struct Script {
    next_launches: VecDeque<BackendError>,
    /// Every `launch` call, failed or not.
    launch_calls: usize,
    instances: HashMap<String, ScriptedInstance>,
    order: Vec<String>,
    terminates: Vec<(String, Ending)>,
    terminate_errors: u32,
    /// Instances that end only on the second terminate call.
    slow_to_end: bool,
    /// `observe` calls.
    observes: usize,
}

/// An in-memory backend: instances the tests start, end and make vanish at will. It tests the
/// engine's decisions; the backends themselves are tested against real processes and providers'
/// fakes.
#[derive(Debug)]
pub struct Scripted {
    pub name: String,
    pub max: usize,
    /// Offered sample batches (`TrainingBackend::runs_samples`).
    pub samples: bool,
    pub scope: Scope,
    pub price: Option<MicroUsd>,
    /// `TrainingBackend::observe_every` (default zero: every tick).
    pub observe_every: Duration,
    script: Mutex<Script>,
}

impl Scripted {
    pub fn new(name: &str, max: usize) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            max,
            samples: false,
            scope: Scope::Shared,
            price: Some(MicroUsd::parse_dollars("0.72").expect("price")),
            observe_every: Duration::ZERO,
            script: Mutex::new(Script::default()),
        })
    }

    /// A scripted backend the engine observes at most every `every` (a provider's poll interval).
    pub fn observed_every(name: &str, max: usize, every: Duration) -> Arc<Self> {
        let mut s = Arc::try_unwrap(Self::new(name, max)).expect("a fresh Arc");
        s.observe_every = every;
        Arc::new(s)
    }

    /// Calls to `observe`.
    pub fn observes(&self) -> usize {
        self.script().observes
    }

    /// A scripted backend that also renders sample batches.
    pub fn with_samples(name: &str, max: usize) -> Arc<Self> {
        let mut s = Arc::try_unwrap(Self::new(name, max)).expect("a fresh Arc");
        s.samples = true;
        Arc::new(s)
    }

    /// The latest instance launched (of any LoRA or batch).
    pub fn latest(&self) -> Option<(String, ScriptedInstance)> {
        let s = self.script();
        let id = s.order.last()?.clone();
        s.instances.get(&id).map(|i| (id, i.clone()))
    }

    /// Sets what instance `provider_id` looks like.
    pub fn set_instance(&self, provider_id: &str, state: Observed) {
        if let Some(i) = self.script().instances.get_mut(provider_id) {
            i.state = state;
        }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next launch fails with `e`.
    pub fn fail_next_launch(&self, e: BackendError) {
        self.script().next_launches.push_back(e);
    }

    /// The next `n` terminate calls fail.
    pub fn fail_terminates(&self, n: u32) {
        self.script().terminate_errors = n;
    }

    pub fn slow_to_end(&self) {
        self.script().slow_to_end = true;
    }

    /// The latest instance launched for `lora`.
    pub fn instance(&self, lora: LoraId) -> Option<(String, ScriptedInstance)> {
        let s = self.script();
        s.order.iter().rev().find_map(|id| {
            s.instances
                .get(id)
                .filter(|i| i.lora == lora)
                .map(|i| (id.clone(), i.clone()))
        })
    }

    /// Sets what the latest instance of `lora` looks like.
    pub fn set(&self, lora: LoraId, state: Observed) {
        let id = self.instance(lora).expect("an instance").0;
        self.script()
            .instances
            .get_mut(&id)
            .expect("instance")
            .state = state;
    }

    /// An instance nobody launched (a leftover of a crash, another deployment's), named `name`.
    pub fn plant(&self, name: &str) -> String {
        let mut s = self.script();
        let id = format!("{}-planted-{}", self.name, s.order.len() + 1);
        s.order.push(id.clone());
        s.instances.insert(
            id.clone(),
            ScriptedInstance {
                name: name.to_owned(),
                lora: LoraId::new(),
                attempt: 1,
                token: String::new(),
                server: String::new(),
                state: Observed::Running,
                terminated: false,
            },
        );
        id
    }

    pub fn is_terminated(&self, provider_id: &str) -> bool {
        self.script()
            .instances
            .get(provider_id)
            .is_some_and(|i| i.terminated)
    }

    pub fn launches(&self) -> usize {
        self.script().order.len()
    }

    /// Calls to `launch`, failed or not.
    pub fn launch_calls(&self) -> usize {
        self.script().launch_calls
    }

    /// Scripted launch failures not used yet (each is one call the engine has not made).
    pub fn fail_pending(&self) -> usize {
        self.script().next_launches.len()
    }

    pub fn live(&self) -> usize {
        self.script()
            .instances
            .values()
            .filter(|i| !i.terminated)
            .count()
    }

    pub fn terminates(&self) -> Vec<(String, Ending)> {
        self.script().terminates.clone()
    }
}

#[async_trait]
impl TrainingBackend for Scripted {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_runs(&self) -> usize {
        self.max
    }

    fn runs_samples(&self) -> bool {
        self.samples
    }

    fn scope(&self) -> Scope {
        self.scope
    }

    fn observe_every(&self) -> Duration {
        self.observe_every
    }

    async fn launch(&self, launch: &Launch) -> Result<Launched, BackendError> {
        let mut s = self.script();
        s.launch_calls += 1;
        if let Some(e) = s.next_launches.pop_front() {
            return Err(e);
        }
        let id = format!("{}-{}", self.name, s.order.len() + 1);
        s.order.push(id.clone());
        s.instances.insert(
            id.clone(),
            ScriptedInstance {
                name: launch.instance_name.clone(),
                lora: launch.lora_id,
                attempt: launch.attempt,
                token: launch.token.clone(),
                server: launch.server.clone(),
                state: Observed::Running,
                terminated: false,
            },
        );
        Ok(Launched {
            provider_id: id,
            gpu_type: Some("NVIDIA Test GPU".into()),
            price_per_hour: self.price,
        })
    }

    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError> {
        let mut s = self.script();
        s.observes += 1;
        Ok(instances
            .iter()
            .map(|i| match s.instances.get(&i.provider_id) {
                Some(inst) if inst.terminated => Observed::Ended {
                    outcome: "vanished",
                    reason: Some("terminated".into()),
                    gone: true,
                },
                Some(inst) => inst.state.clone(),
                None => Observed::Ended {
                    outcome: "vanished",
                    reason: None,
                    gone: true,
                },
            })
            .collect())
    }

    async fn list_instances(
        &self,
        prefix: &str,
    ) -> Result<Option<Vec<(String, String)>>, BackendError> {
        let s = self.script();
        Ok(Some(
            s.instances
                .iter()
                .filter(|(_, i)| !i.terminated && i.name.starts_with(prefix))
                .map(|(id, i)| (id.clone(), i.name.clone()))
                .collect(),
        ))
    }

    async fn terminate(
        &self,
        instance: &Instance,
        ending: Ending,
    ) -> Result<Termination, BackendError> {
        let mut s = self.script();
        s.terminates.push((instance.provider_id.clone(), ending));
        if s.terminate_errors > 0 {
            s.terminate_errors -= 1;
            return Err(BackendError::Transient("the provider answered 503".into()));
        }
        let slow = s.slow_to_end;
        let first = s
            .terminates
            .iter()
            .filter(|(id, _)| *id == instance.provider_id)
            .count()
            == 1;
        if slow && first {
            return Ok(Termination {
                gone: false,
                billed_millis: None,
            });
        }
        if let Some(inst) = s.instances.get_mut(&instance.provider_id) {
            inst.terminated = true;
        }
        Ok(Termination {
            gone: true,
            billed_millis: None,
        })
    }
}

// --- local processes ---------------------------------------------------------------------------

pub fn worker_process() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker_process.sh")
}

pub fn local_settings(
    work_dir: PathBuf,
    max_concurrent: usize,
    env: &[(&str, &str)],
) -> LocalBackendSettings {
    let mut s = LocalBackendSettings::new(worker_process(), work_dir);
    s.max_concurrent = max_concurrent;
    s.kill_grace = Duration::from_secs(3);
    s.finish_grace = Duration::from_secs(2);
    s.env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    s
}

impl Db {
    /// The local backend running the worker fixture with `env`.
    pub fn local(&self, max_concurrent: usize, env: &[(&str, &str)]) -> Arc<LocalBackend> {
        Arc::new(LocalBackend::new(local_settings(
            self.dir.path().join("runs"),
            max_concurrent,
            env,
        )))
    }
}

/// A worker that runs "forever" (until stopped).
pub const LONG_RUN: &[(&str, &str)] = &[("WORKER_SECONDS", "600")];

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
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
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
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}; reports: {reports:#?}"
        );
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

    fn issue_sample(
        &self,
        batch: loraforge_domain::SampleBatchId,
        attempt: u32,
    ) -> Result<String, String> {
        Ok(format!("sample-token-{batch}-{attempt}"))
    }
}
