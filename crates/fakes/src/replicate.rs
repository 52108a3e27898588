//! A contract fake of Replicate's trainings API (api-contracts.md §3), written from the
//! contract rather than from our client. [`FakeReplicate::start`] serves `/v1/…` on a free local
//! port; trainings really run: each downloads its `dataset_url`, writes its `spec` to a file and
//! runs the configured [`TrainingCommand`] (by default our Cog model's `cog/train.py`) in its own
//! process group, its stdout streamed into `logs`, its tar served as `output.weights`. Webhooks
//! are sent signed as Replicate signs them (Standard Webhooks), honouring the filter, with
//! optional duplicates and replays. The handle steers it: throttling (429), injected statuses,
//! a lost create answer, random faults with a seed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::process;
pub use crate::replicate_config::{Faults, ReplicateConfig, TrainingCommand};

/// A training's state as the fake keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeTrainingStatus {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
}

impl FakeTrainingStatus {
    pub fn as_wire(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

/// One webhook delivery attempt the fake made.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub training: String,
    pub event: String,
    /// `webhook-id` (the same across retries, duplicates and replays).
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    /// The raw body sent.
    pub body: String,
    /// The receiver's HTTP status, or `None` when it could not be reached.
    pub answered: Option<u16>,
}

/// One training as the fake keeps it.
pub(crate) struct TrainingRecord {
    pub seq: u64,
    pub id: String,
    pub model: String,
    pub version: String,
    pub destination: String,
    pub input: Value,
    pub status: FakeTrainingStatus,
    pub logs: String,
    pub error: Option<String>,
    pub output: Option<Value>,
    pub predict_time: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub started: Option<Instant>,
    pub webhook: Option<String>,
    pub webhook_events_filter: Option<Vec<String>>,
    /// The live command's process group.
    pub pid: Option<i32>,
    pub weights: Option<PathBuf>,
}

impl TrainingRecord {
    pub fn to_json(&self, base: &str) -> Value {
        let metrics = match self.predict_time {
            Some(t) => json!({"predict_time": t, "total_time": t}),
            None => json!({}),
        };
        let url = format!("{base}/v1/trainings/{}", self.id);
        let mut body = json!({
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "destination": self.destination,
            "status": self.status.as_wire(),
            "source": "api",
            "input": self.input,
            "output": self.output,
            "logs": self.logs,
            "error": self.error,
            "metrics": metrics,
            "created_at": rfc3339(self.created_at),
            "started_at": self.started_at.map(rfc3339),
            "completed_at": self.completed_at.map(rfc3339),
            "urls": {"get": url, "cancel": format!("{url}/cancel")},
        });
        if let Some(hook) = &self.webhook {
            body["webhook"] = json!(hook);
            body["webhook_events_filter"] = json!(self.webhook_events_filter);
        }
        body
    }

    /// Ends the training in `status` (once).
    pub fn finish(&mut self, status: FakeTrainingStatus) {
        if self.status.is_terminal() {
            return;
        }
        self.status = status;
        self.completed_at = Some(Utc::now());
        let ran = self
            .started
            .map_or(0.000_003, |s| s.elapsed().as_secs_f64());
        self.predict_time = Some(ran);
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A one-off answer in front of the API.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Injection {
    Throttle,
    Status(u16),
}

pub(crate) struct State {
    pub trainings: HashMap<String, TrainingRecord>,
    pub next_seq: u64,
    pub injections: Vec<Injection>,
    /// The next create is carried out but answered 504 (its answer "lost").
    pub lose_create_answer: u32,
    pub rng: u64,
    pub deliveries: Vec<Delivery>,
    pub creates: u32,
    pub cancels: u32,
    /// Requests carried out whose answer was replaced by a 504 (`lose_create_answers`, and
    /// `Faults::lose_rate`).
    pub lost_answers: u32,
    pub shutting_down: bool,
}

pub(crate) struct Shared {
    pub config: ReplicateConfig,
    pub work_dir: PathBuf,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub http: reqwest::Client,
    state: Mutex<State>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake Replicate. Dropping it stops the server and kills every command it started.
pub struct FakeReplicate {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for FakeReplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeReplicate")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeReplicate {
    /// Binds `config.bind` and serves until dropped. Panics when it cannot bind (test helper).
    pub async fn start(config: ReplicateConfig) -> Self {
        Self::try_start(config)
            .await
            .expect("fake Replicate could not start")
    }

    pub async fn try_start(config: ReplicateConfig) -> io::Result<Self> {
        let (work_dir, temp) =
            crate::folder_or_temp(config.work_dir.as_deref(), "fake-replicate-")?;
        let listener = tokio::net::TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .map_err(io::Error::other)?;
        let seed = config.faults.map_or(0, |f| f.seed);
        let shared = Arc::new(Shared {
            config,
            work_dir,
            base: format!("http://{addr}"),
            http,
            state: Mutex::new(State {
                trainings: HashMap::new(),
                next_seq: 0,
                injections: Vec::new(),
                lose_create_answer: 0,
                rng: seed,
                deliveries: Vec::new(),
                creates: 0,
                cancels: 0,
                lost_answers: 0,
                shutting_down: false,
            }),
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = crate::replicate_server::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "fake Replicate server stopped");
            }
        });
        Ok(Self {
            shared,
            addr,
            shutdown: Some(shutdown),
            server,
            _temp: temp,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, as `https://api.replicate.com/v1`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.shared.base)
    }

    pub fn work_dir(&self) -> &Path {
        &self.shared.work_dir
    }

    /// The next `count` API requests answer 429 with Replicate's throttling body and its
    /// `ratelimit-*` headers (and `Retry-After: 1` when configured).
    pub fn throttle(&self, count: u32) {
        let mut st = self.shared.lock();
        st.injections
            .extend(std::iter::repeat_n(Injection::Throttle, count as usize));
    }

    /// The next `count` API requests answer `status` without reaching the API.
    pub fn inject_status(&self, count: u32, status: u16) {
        let mut st = self.shared.lock();
        st.injections.extend(std::iter::repeat_n(
            Injection::Status(status),
            count as usize,
        ));
    }

    /// The next `count` creates are carried out but answered 504, as when the answer is lost.
    pub fn lose_create_answers(&self, count: u32) {
        self.shared.lock().lose_create_answer = count;
    }

    /// Every training's JSON, oldest first.
    pub fn trainings(&self) -> Vec<Value> {
        let st = self.shared.lock();
        let mut all: Vec<_> = st.trainings.values().collect();
        all.sort_by_key(|t| t.seq);
        all.into_iter()
            .map(|t| t.to_json(&self.shared.base))
            .collect()
    }

    pub fn training(&self, id: &str) -> Option<Value> {
        let st = self.shared.lock();
        st.trainings.get(id).map(|t| t.to_json(&self.shared.base))
    }

    /// Creates that made a training, and cancels received.
    pub fn counts(&self) -> (u32, u32) {
        let st = self.shared.lock();
        (st.creates, st.cancels)
    }

    /// Requests carried out whose answer was lost (answered 504).
    pub fn lost_answers(&self) -> u32 {
        self.shared.lock().lost_answers
    }

    /// Every webhook delivery attempt, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().deliveries.clone()
    }

    /// Commands still running.
    pub fn live_processes(&self) -> usize {
        let st = self.shared.lock();
        st.trainings.values().filter(|t| t.pid.is_some()).count()
    }

    /// Ends a processing training as `failed` with `error`, killing its command (the GPU host
    /// died). `false` unless it was running.
    pub fn fail_training(&self, id: &str, error: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(t) = st.trainings.get_mut(id) else {
            return false;
        };
        if t.status.is_terminal() {
            return false;
        }
        t.error = Some(error.to_owned());
        t.finish(FakeTrainingStatus::Failed);
        if let Some(pid) = t.pid {
            process::signal_group(pid, libc::SIGKILL);
        }
        drop(st);
        crate::replicate_run::completed_hook(&self.shared, id);
        true
    }
}

impl Drop for FakeReplicate {
    fn drop(&mut self) {
        let pids: Vec<i32> = {
            let mut st = self.shared.lock();
            st.shutting_down = true;
            st.trainings.values().filter_map(|t| t.pid).collect()
        };
        for &pid in &pids {
            process::signal_group(pid, libc::SIGKILL);
        }
        for &pid in &pids {
            process::reap_blocking(pid, Duration::from_secs(2));
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}

/// splitmix64: a tiny seeded generator, so faults repeat with the seed.
pub(crate) fn next_random(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
