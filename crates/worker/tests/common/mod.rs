//! Test support: a fake control plane (the three worker routes of `docs/worker-protocol.md` and
//! a `/files/…` store behind "signed" links) on 127.0.0.1, and the fake trainer's command.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use loraforge_worker::{TrainerCommand, WorkerConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const LORA_ID: &str = "0193a1b2-lora";
pub const TOKEN: &str = "worker-token-5ecret-do-not-log";
/// The "signature" of every file link; tests check it never reaches a log.
pub const SIG: &str = "s1gnature-5ecret-do-not-log";

pub const MODEL_KEY: &str = "lora-models/u1/0193a1b2-lora/model.safetensors";
pub const KOHYA_KEY: &str = "lora-models/u1/0193a1b2-lora/model.kohya.safetensors";

pub fn validation_key(i: usize) -> String {
    format!("lora-validation-images/u1/0193a1b2-lora/validation/{i}.png")
}

/// An error answer in the API's shape.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

impl Failure {
    pub fn new(status: u16, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            message,
        }
    }

    fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap();
        (
            status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

/// One PUT's key and framing headers.
#[derive(Debug, Clone)]
pub struct PutSeen {
    pub key: String,
    pub content_length: Option<String>,
    pub transfer_encoding: Option<String>,
}

/// What the fake control plane saw and how it is told to misbehave.
#[derive(Default)]
pub struct PlaneState {
    pub job: Mutex<Value>,
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    pub puts_seen: Mutex<Vec<PutSeen>>,
    pub progress: Mutex<Vec<Value>>,
    pub results: Mutex<Vec<Value>>,
    /// Bodies of `POST …/failure`.
    pub failures: Mutex<Vec<Value>>,
    /// Bodies of `POST …/checkpoint`.
    pub checkpoints: Mutex<Vec<Value>>,
    pub job_gets: AtomicUsize,
    pub puts: AtomicUsize,
    /// Requests with a missing or wrong token or signature.
    pub refused: AtomicUsize,

    /// The first N job GETs answer 503.
    pub fail_gets: AtomicUsize,
    /// Every job GET answers this.
    pub job_failure: Mutex<Option<Failure>>,
    /// The first N PUTs answer 503.
    pub fail_puts: AtomicUsize,
    /// Progress posts after the first K answer 409 `job_not_active`.
    pub progress_409_after: Mutex<Option<usize>>,
    /// Every result post answers this.
    pub result_failure: Mutex<Option<Failure>>,
    /// Progress posts are answered this late.
    pub progress_delay: Mutex<Duration>,
    /// While set, every progress post is held until this file exists (the fake trainer's
    /// `finished`), for at most [`GATE_LIMIT`]; posts that gave up waiting are counted in
    /// `gate_timeouts`.
    pub progress_gate: Mutex<Option<PathBuf>>,
    pub gate_timeouts: AtomicUsize,
}

/// Longest a gated progress post waits for its file.
pub const GATE_LIMIT: Duration = Duration::from_secs(30);

pub struct Plane {
    pub base: String,
    pub state: Arc<PlaneState>,
    /// Notified by [`Plane::go_away`]: the server stops for good.
    gone: Arc<tokio::sync::Notify>,
}

/// One dataset image for [`Plane::set_job`].
pub struct Image {
    pub file_name: &'static str,
    pub bytes: Vec<u8>,
    pub caption: &'static str,
}

pub fn images() -> Vec<Image> {
    vec![
        Image {
            file_name: "00.png",
            bytes: b"\x89PNG\r\n\x1a\n first".repeat(50),
            caption: "zxq, a photo",
        },
        Image {
            file_name: "01.jpg",
            bytes: b"\xff\xd8\xff second".repeat(700),
            caption: "zxq, in a park",
        },
        Image {
            file_name: "02.webp",
            bytes: b"RIFF....WEBP third".to_vec(),
            caption: "zxq, smiling",
        },
    ]
}

pub fn trainer_spec() -> Value {
    json!({
        "job_id": LORA_ID, "base_model": "/data/models/tiny", "type": "lora", "rank": 8, "alpha": 32,
        "dropout": 0.1, "target_modules": ["to_k", "to_q"], "steps": 10, "learning_rate": 0.0001,
        "batch_size": 1, "optimizer": "adamw", "lr_scheduler": "constant", "lr_warmup_steps": 0,
        "resolution": 64, "trigger_words": ["zxq"], "seed": 42,
        "validation": {"enabled": true, "scorer": null}
    })
}

impl Plane {
    pub async fn start() -> Plane {
        let state = Arc::new(PlaneState::default());
        let app = Router::new()
            .route("/api/v1/worker/jobs/{id}", get(get_job))
            .route("/api/v1/worker/jobs/{id}/progress", post(post_progress))
            .route("/api/v1/worker/jobs/{id}/result", post(post_result))
            .route("/api/v1/worker/jobs/{id}/failure", post(post_failure))
            .route("/api/v1/worker/jobs/{id}/checkpoint", post(post_checkpoint))
            .route("/files/{*key}", get(get_file).put(put_file))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let gone = Arc::new(tokio::sync::Notify::new());
        let stop = gone.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.notified().await })
                .await
                .unwrap()
        });
        let plane = Plane { base, state, gone };
        plane.set_job(1, images(), 10.0, 100);
        plane
    }

    /// The control plane goes away for good (a service that died and never came back): it
    /// stops listening and closes its connections; every later call fails to connect.
    pub fn go_away(&self) {
        self.gone.notify_one();
    }

    pub fn link(&self, key: &str) -> String {
        format!("{}/files/{key}?sig={SIG}&expires=99", self.base)
    }

    /// Serves a job with these images (stored under `datasets/…`) and intervals.
    pub fn set_job(
        &self,
        attempt: u64,
        images: Vec<Image>,
        heartbeat_interval_s: f64,
        progress_interval_ms: u64,
    ) {
        let mut files = self.state.files.lock().unwrap();
        let images: Vec<Value> = images
            .into_iter()
            .map(|img| {
                let key = format!("datasets/u1/d1/{}", img.file_name.replace('/', "_"));
                let entry = json!({"file_name": img.file_name, "url": self.link(&key), "bytes": img.bytes.len(),
                                   "caption": img.caption});
                files.insert(key, img.bytes);
                entry
            })
            .collect();
        let validation: Vec<Value> = (0..3)
            .map(|i| json!({"key": validation_key(i), "url": self.link(&validation_key(i))}))
            .collect();
        *self.state.job.lock().unwrap() = json!({
            "lora_id": LORA_ID,
            "attempt": attempt,
            "trainer_spec": trainer_spec(),
            "images": images,
            "uploads": {
                "model": {"key": MODEL_KEY, "url": self.link(MODEL_KEY)},
                "kohya": {"key": KOHYA_KEY, "url": self.link(KOHYA_KEY)},
                "validation": validation,
            },
            "heartbeat_interval_s": heartbeat_interval_s,
            "progress_interval_ms": progress_interval_ms,
        });
    }

    /// Changes the served job.
    pub fn edit_job(&self, edit: impl FnOnce(&mut Value)) {
        edit(&mut self.state.job.lock().unwrap());
    }

    pub fn file(&self, key: &str) -> Option<Vec<u8>> {
        self.state.files.lock().unwrap().get(key).cloned()
    }

    pub fn progress(&self) -> Vec<Value> {
        self.state.progress.lock().unwrap().clone()
    }

    pub fn checkpoints(&self) -> Vec<Value> {
        self.state.checkpoints.lock().unwrap().clone()
    }

    pub fn failures(&self) -> Vec<Value> {
        self.state.failures.lock().unwrap().clone()
    }

    pub fn results(&self) -> Vec<Value> {
        self.state.results.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until `ready` holds.
    pub async fn wait_until(&self, what: &str, ready: impl Fn(&PlaneState) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !ready(&self.state) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The refusal, unless the request carries the token and names its job.
fn unauthorized(state: &PlaneState, headers: &HeaderMap, id: &str) -> Option<Response> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return Some(Failure::new(401, "unauthorized", "a worker token is required").response());
    }
    if id != LORA_ID {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return Some(Failure::new(403, "forbidden", "the token is for another job").response());
    }
    None
}

async fn get_job(
    State(s): State<Arc<PlaneState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    s.job_gets.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = unauthorized(&s, &headers, &id) {
        return r;
    }
    if let Some(f) = s.job_failure.lock().unwrap().clone() {
        return f.response();
    }
    if take_one(&s.fail_gets) {
        return Failure::new(503, "unavailable", "try again").response();
    }
    Json(s.job.lock().unwrap().clone()).into_response()
}

async fn post_progress(
    State(s): State<Arc<PlaneState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers, &id) {
        return r;
    }
    let delay = *s.progress_delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let gate = s.progress_gate.lock().unwrap().clone();
    if let Some(gate) = gate {
        let deadline = tokio::time::Instant::now() + GATE_LIMIT;
        while !gate.exists() {
            if tokio::time::Instant::now() >= deadline {
                s.gate_timeouts.fetch_add(1, Ordering::SeqCst);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut progress = s.progress.lock().unwrap();
    if let Some(k) = *s.progress_409_after.lock().unwrap()
        && progress.len() >= k
    {
        return Failure::new(409, "job_not_active", "the job was cancelled").response();
    }
    progress.push(body);
    Json(json!({"continue": true})).into_response()
}

/// A report route that records its body in `log` (chosen by `pick`) and answers
/// `{"recorded": true, …}` as the control plane does.
async fn record_report(
    s: &PlaneState,
    id: &str,
    headers: &HeaderMap,
    body: Value,
    pick: fn(&PlaneState) -> &Mutex<Vec<Value>>,
) -> Response {
    if let Some(r) = unauthorized(s, headers, id) {
        return r;
    }
    pick(s).lock().unwrap().push(body);
    Json(json!({"recorded": true, "status": "training", "error": null})).into_response()
}

async fn post_checkpoint(
    State(s): State<Arc<PlaneState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record_report(&s, &id, &headers, body, |s| &s.checkpoints).await
}

async fn post_failure(
    State(s): State<Arc<PlaneState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record_report(&s, &id, &headers, body, |s| &s.failures).await
}

async fn post_result(
    State(s): State<Arc<PlaneState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers, &id) {
        return r;
    }
    s.results.lock().unwrap().push(body);
    if let Some(f) = s.result_failure.lock().unwrap().clone() {
        return f.response();
    }
    Json(json!({"status": "completed", "error": null})).into_response()
}

/// The refusal, unless the link carries the signature.
fn unsigned(s: &PlaneState, q: &HashMap<String, String>) -> Option<Response> {
    if q.get("sig").map(String::as_str) == Some(SIG) {
        None
    } else {
        s.refused.fetch_add(1, Ordering::SeqCst);
        Some(Failure::new(403, "forbidden", "bad signature").response())
    }
}

async fn get_file(
    State(s): State<Arc<PlaneState>>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unsigned(&s, &q) {
        return r;
    }
    match s.files.lock().unwrap().get(&key) {
        Some(bytes) => bytes.clone().into_response(),
        None => Failure::new(404, "not_found", "no such file").response(),
    }
}

async fn put_file(
    State(s): State<Arc<PlaneState>>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unsigned(&s, &q) {
        return r;
    }
    s.puts.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    s.puts_seen.lock().unwrap().push(PutSeen {
        key: key.clone(),
        content_length: header("content-length"),
        transfer_encoding: header("transfer-encoding"),
    });
    if take_one(&s.fail_puts) {
        return Failure::new(503, "unavailable", "try again").response();
    }
    s.files.lock().unwrap().insert(key, body.to_vec());
    StatusCode::OK.into_response()
}

/// Decrements `n` if it is positive; whether it was.
fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

/// A test's scratch: `out` (the worker's job folder, not yet made) and `fake` (the fake
/// trainer's folder, made) inside a temp dir that lives as long as this.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub out: PathBuf,
    pub fake: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let (out, fake) = (dir.path().join("job"), dir.path().join("fake"));
        std::fs::create_dir_all(&fake).unwrap();
        Scratch { dir, out, fake }
    }
}

/// The fake trainer, recording into `fake_dir`.
pub fn fake_trainer(fake_dir: &Path, env: &[(&str, &str)]) -> TrainerCommand {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_trainer.sh");
    let mut vars = vec![("FAKE_DIR".to_owned(), fake_dir.display().to_string())];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    TrainerCommand {
        program: "/bin/sh".into(),
        args: vec![script.display().to_string()],
        env: vars,
    }
}

/// A worker config for `plane`, with 10 ms retry pauses.
pub fn config(plane: &Plane, out: &Path, trainer: TrainerCommand) -> WorkerConfig {
    let mut c = WorkerConfig::new(plane.base.parse().unwrap(), LORA_ID, TOKEN, out, trainer);
    c.retry_delay = Duration::from_millis(10);
    c
}

/// Runs one attempt that is never asked to stop; its exit code and stdout.
pub async fn run(config: WorkerConfig) -> (i32, String) {
    let mut stdout = Vec::new();
    let code = loraforge_worker::run_with(config, &mut stdout, std::future::pending()).await;
    (code, String::from_utf8(stdout).unwrap())
}

/// The last stdout line as JSON.
pub fn last_line(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no stdout line in {stdout:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What the fake trainer writes: `seq from 20000`.
pub fn seq(from: u32) -> Vec<u8> {
    (from..=20000)
        .map(|n| format!("{n}\n"))
        .collect::<String>()
        .into_bytes()
}

pub fn validation_png(i: usize) -> Vec<u8> {
    format!("PNG validation image {i}").into_bytes()
}

/// Whether process `pid` still exists.
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for the process.
    unsafe { libc::kill(pid, 0) == 0 }
}

pub fn read_pid(fake_dir: &Path) -> i32 {
    std::fs::read_to_string(fake_dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

pub fn trainer_runs(fake_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(fake_dir.join("runs.log"))
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}
