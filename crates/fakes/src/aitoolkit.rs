//! A contract fake of ostris/ai-toolkit's web UI API (`shared/research/api-contracts.md` §4),
//! written from the contract rather than from our client: auth by `AI_TOOLKIT_AUTH` (the token is
//! `Authorization`'s second word; `/api/img/*` and `/api/files/*` exempt), datasets on disk,
//! jobs with ai-toolkit's quirks (`start` and `stop` answer the row as it was before, a queued
//! job runs only while its GPU queue `is_running`, 409 on a duplicate job name, outputs listed
//! by `files`), one job at a time per queue.
//!
//! A running job really trains: with a [`ToolkitTrainer`] configured it runs our trainer
//! (`python -m loraforge_trainer train …`) on the job's dataset folder with a spec derived back
//! from the job config, follows its JSON lines into `step`/`info`, writes its stdout to
//! `log.txt`, and at the end puts the trainer's kohya file as `<name>.safetensors` (plus a step
//! save per checkpoint it reported, holding the same weights) and its validation images under
//! `samples/` into `<TRAINING_FOLDER>/<name>/`. Without a trainer a job fails at once with
//! `error`. Faults: [`FakeAiToolkit::fail_next_jobs`] (a job ends `error` with a given `info`
//! and log text), [`FakeAiToolkit::inject_status`] (the next calls answer a status).
//! Dropping the fake SIGKILLs every trainer it started.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

#[path = "aitoolkit_routes.rs"]
mod routes;
#[path = "aitoolkit_run.rs"]
mod run;

/// How the fake runs our trainer.
#[derive(Debug, Clone)]
pub struct ToolkitTrainer {
    /// The interpreter (`~/.cache/loraforge/venv-trainer/bin/python`).
    pub program: PathBuf,
    /// Before `train …`: `["-m", "loraforge_trainer"]`.
    pub args: Vec<String>,
    /// Extra environment (`PYTHONPATH`, `HF_HUB_OFFLINE`, thread counts).
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ToolkitConfig {
    /// `AI_TOOLKIT_AUTH`: `None` checks nothing.
    pub auth: Option<String>,
    /// Holds `datasets/` (DATASETS_FOLDER) and `output/` (TRAINING_FOLDER).
    pub root: PathBuf,
    pub trainer: Option<ToolkitTrainer>,
    /// How often the queue worker looks for a job to run (ai-toolkit's cron). Default 100 ms.
    pub tick: Duration,
    /// Between SIGTERM and SIGKILL when a job is stopped. Default 10 s.
    pub kill_grace: Duration,
}

impl ToolkitConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            auth: None,
            root: root.into(),
            trainer: None,
            tick: Duration::from_millis(100),
            kill_grace: Duration::from_secs(10),
        }
    }

    pub fn datasets_folder(&self) -> PathBuf {
        self.root.join("datasets")
    }

    pub fn training_folder(&self) -> PathBuf {
        self.root.join("output")
    }
}

/// A job row (`ui/prisma/schema.prisma`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolkitJob {
    pub id: String,
    pub name: String,
    pub gpu_ids: String,
    /// The JSON string the row holds.
    pub job_config: String,
    pub status: String,
    pub stop: bool,
    pub step: u64,
    pub total_steps: Option<u64>,
    pub info: String,
    pub pid: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ToolkitJob {
    pub(crate) fn row(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "gpu_ids": self.gpu_ids, "job_config": self.job_config,
            "created_at": self.created_at.to_rfc3339(), "updated_at": self.updated_at.to_rfc3339(),
            "status": self.status, "stop": self.stop, "return_to_queue": false, "step": self.step,
            "total_steps": self.total_steps, "info": self.info, "speed_string": "",
            "queue_position": 1000, "pid": self.pid, "job_type": "train", "job_ref": null,
            "save_now": false, "sample_now": false,
        })
    }
}

/// One API call the fake took: method, path (no query) and the status it answered (0 while the
/// call is still being answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolkitCall {
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub jobs: Vec<ToolkitJob>,
    /// gpu_ids → is_running.
    pub queues: BTreeMap<String, bool>,
    pub calls: Vec<ToolkitCall>,
    /// Injected: the next `n` calls answer this status.
    pub inject: Option<(u32, u16)>,
    /// The next jobs to start end `error` with (info, log text).
    pub failures: Vec<(String, String)>,
    /// Live trainer process groups, by job id.
    pub running: BTreeMap<String, i32>,
    /// Step saves written so far (all jobs).
    pub step_saves: usize,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: ToolkitConfig,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake; dropping it stops the server and SIGKILLs every trainer.
#[derive(Debug)]
pub struct FakeAiToolkit {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeAiToolkit {
    /// Serves on 127.0.0.1:`port` (0: a free one).
    pub async fn start(config: ToolkitConfig, port: u16) -> std::io::Result<Self> {
        std::fs::create_dir_all(config.datasets_folder())?;
        std::fs::create_dir_all(config.training_folder())?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
        });
        let app = routes::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake ai-toolkit server stopped");
            }
        });
        let worker = tokio::spawn(run::queue_worker(Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            tasks: vec![server, worker],
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn root(&self) -> &Path {
        &self.shared.config.root
    }

    pub fn jobs(&self) -> Vec<ToolkitJob> {
        self.shared.lock().jobs.clone()
    }

    /// Dataset folders on disk.
    pub fn datasets(&self) -> Vec<String> {
        routes::dataset_names(&self.shared.config)
    }

    pub fn queue_running(&self, gpu_ids: &str) -> bool {
        self.shared
            .lock()
            .queues
            .get(gpu_ids)
            .copied()
            .unwrap_or(false)
    }

    pub fn calls(&self) -> Vec<ToolkitCall> {
        self.shared.lock().calls.clone()
    }

    /// The next `count` calls (any route) answer `status` with `{"error": …}`.
    pub fn inject_status(&self, count: u32, status: u16) {
        self.shared.lock().inject = Some((count, status));
    }

    /// The next job that starts ends `error` with `info` and `log` in its log.txt.
    pub fn fail_next_jobs(&self, info: &str, log: &str) {
        self.shared
            .lock()
            .failures
            .push((info.to_owned(), log.to_owned()));
    }

    /// How many step saves (`<name>_<step>.safetensors`) jobs have written.
    pub fn step_saves_seen(&self) -> usize {
        self.shared.lock().step_saves
    }

    /// Live trainer processes.
    pub fn live_processes(&self) -> usize {
        self.shared.lock().running.len()
    }
}

impl Drop for FakeAiToolkit {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let groups: Vec<i32> = self.shared.lock().running.values().copied().collect();
        for pgid in groups {
            crate::process::signal_group(pgid, libc::SIGKILL);
            crate::process::reap_blocking(pgid, Duration::from_secs(2));
        }
    }
}
