//! Serverless jobs: the queue per endpoint, the workers that run the endpoint's image the way
//! our RunPod handler runs `loraforge worker`, and the states of api-contracts.md §2.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::config::EndpointSpec;
use crate::process::{self, Stdout};
use crate::state::{CallOp, Shared, State};
use crate::{FakeJobState, JobSnapshot};

/// RunPod's default `executionTimeout` (10 min).
const DEFAULT_EXECUTION_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) struct JobRecord {
    pub id: String,
    pub endpoint: String,
    pub input: Value,
    pub execution_timeout: Duration,
    pub state: FakeJobState,
    pub created: Instant,
    pub created_at: DateTime<Utc>,
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub process: Option<(u64, i32)>,
}

impl JobRecord {
    pub fn snapshot(&self, shared: &Shared) -> JobSnapshot {
        JobSnapshot {
            id: self.id.clone(),
            endpoint: self.endpoint.clone(),
            state: self.state,
            input: self.input.clone(),
            created_at: self.created_at,
            delay_time_ms: self.delay_ms(),
            execution_time_ms: self.execution_ms(),
            output: self.output.clone(),
            error: self.error.clone(),
            process_alive: self.process.is_some(),
            pid: self.process.map(|(_, pid)| pid),
            log_path: shared.logs_dir.join(format!("job-{}.log", self.id)),
        }
    }

    fn delay_ms(&self) -> Option<u64> {
        let until = self.started.or(self.finished)?;
        Some(until.duration_since(self.created).as_millis() as u64)
    }

    fn execution_ms(&self) -> Option<u64> {
        Some(self.finished?.duration_since(self.started?).as_millis() as u64)
    }

    /// The `/status` body. `delayTime`/`executionTime` appear once known; the full FAILED and
    /// TIMED_OUT bodies are [U], so they carry the same fields as COMPLETED.
    pub fn to_json(&self) -> Value {
        let mut body = json!({"id": self.id, "status": self.state.as_wire()});
        if let Some(ms) = self.delay_ms() {
            body["delayTime"] = json!(ms);
        }
        if let Some(ms) = self.execution_ms() {
            body["executionTime"] = json!(ms);
        }
        if let Some(output) = &self.output {
            body["output"] = output.clone();
        }
        if let Some(error) = &self.error {
            body["error"] = json!(error);
        }
        body
    }

    fn finish(&mut self, state: FakeJobState) {
        self.state = state;
        let now = Instant::now();
        self.started.get_or_insert(now);
        self.finished = Some(now);
    }
}

pub(crate) fn endpoint<'a>(shared: &'a Shared, id: &str) -> Option<&'a EndpointSpec> {
    shared.config.endpoints.iter().find(|e| e.id == id)
}

/// `POST /run` with a parsed body: queues the job and starts it if a worker is free.
pub(crate) fn run(shared: &Arc<Shared>, endpoint_id: &str, body: &Value) -> Result<Value, String> {
    let input = body
        .get("input")
        .cloned()
        .filter(|v| !v.is_null())
        .ok_or("input is required")?;
    let execution_timeout = match body.pointer("/policy/executionTimeout") {
        None | Some(Value::Null) => DEFAULT_EXECUTION_TIMEOUT,
        // The documented 5 s minimum is not enforced, so tests can time out quickly.
        Some(v) => Duration::from_millis(
            v.as_u64()
                .ok_or("policy.executionTimeout must be milliseconds")?,
        ),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let mut st = shared.lock();
    st.jobs.insert(
        id.clone(),
        JobRecord {
            id: id.clone(),
            endpoint: endpoint_id.to_owned(),
            input,
            execution_timeout,
            state: FakeJobState::InQueue,
            created: Instant::now(),
            created_at: Utc::now(),
            started: None,
            finished: None,
            output: None,
            error: None,
            process: None,
        },
    );
    st.queues
        .entry(endpoint_id.to_owned())
        .or_default()
        .push_back(id.clone());
    st.log_call(CallOp::Run {
        endpoint: endpoint_id.to_owned(),
        job_id: id.clone(),
    });
    let answer = json!({"id": id, "status": "IN_QUEUE"});
    pump(shared, &mut st, endpoint_id);
    Ok(answer)
}

/// Starts queued jobs while the endpoint has free workers.
fn pump(shared: &Arc<Shared>, st: &mut State, endpoint_id: &str) {
    let Some(spec) = endpoint(shared, endpoint_id) else {
        return;
    };
    while !st.shutting_down && st.running.get(endpoint_id).copied().unwrap_or(0) < spec.max_workers
    {
        let Some(id) = st.queues.get_mut(endpoint_id).and_then(|q| q.pop_front()) else {
            break;
        };
        start(shared, st, spec, &id);
    }
}

fn input_text(input: &Value, key: &str) -> Option<String> {
    input.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// One queued job onto a worker: `env_clear()` + image env + the `LORAFORGE_*` variables our
/// RunPod handler derives from the input + `input.env`.
fn start(shared: &Arc<Shared>, st: &mut State, spec: &EndpointSpec, id: &str) {
    let Some(job) = st.jobs.get_mut(id) else {
        return;
    };
    if job.state != FakeJobState::InQueue {
        return;
    }
    job.started = Some(Instant::now());
    let (server, lora, token) = (
        input_text(&job.input, "server"),
        input_text(&job.input, "lora_id"),
        input_text(&job.input, "token"),
    );
    let (Some(server), Some(lora), Some(token)) = (server, lora, token) else {
        job.error = Some("input.server, input.lora_id and input.token are required strings".into());
        job.finish(FakeJobState::Failed);
        return;
    };
    let mut env = vec![
        ("LORAFORGE_SERVER".to_owned(), server),
        ("LORAFORGE_LORA_ID".to_owned(), lora),
        ("LORAFORGE_WORKER_TOKEN".to_owned(), token),
    ];
    if let Some(extra) = job.input.get("env").and_then(Value::as_object) {
        env.extend(
            extra
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))),
        );
    }
    let timeout = job.execution_timeout;
    let log = shared.logs_dir.join(format!("job-{id}.log"));
    let mut child = match process::spawn(&spec.image, &env, &log, Stdout::Piped) {
        Ok(child) => child,
        Err(error) => {
            job.error = Some(format!("worker could not start: {error}"));
            job.finish(FakeJobState::Failed);
            return;
        }
    };
    job.state = FakeJobState::InProgress;
    let pid = child.id().map_or(0, |p| p as i32);
    let key = st.proc_key();
    st.jobs.get_mut(id).expect("present").process = Some((key, pid));
    st.procs.insert(key, pid);
    *st.running.entry(spec.id.clone()).or_default() += 1;
    let stdout = child.stdout.take().expect("piped");
    tokio::spawn(supervise(
        Arc::clone(shared),
        id.to_owned(),
        spec.id.clone(),
        key,
        pid,
        child,
        stdout,
        log,
        timeout,
    ));
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    shared: Arc<Shared>,
    id: String,
    endpoint_id: String,
    key: u64,
    pid: i32,
    mut child: tokio::process::Child,
    stdout: tokio::process::ChildStdout,
    log: std::path::PathBuf,
    timeout: Duration,
) {
    let reader = tokio::spawn(last_line(stdout, log));
    let status = tokio::select! {
        status = child.wait() => status,
        () = tokio::time::sleep(timeout) => {
            if let Some(job) = shared.lock().jobs.get_mut(&id).filter(|j| j.state == FakeJobState::InProgress) {
                job.error = Some(format!("execution timeout of {} ms exceeded", timeout.as_millis()));
                job.finish(FakeJobState::TimedOut);
            }
            process::signal_group(pid, libc::SIGKILL);
            child.wait().await
        }
    };
    // The group is gone or the program closed stdout; a leftover grandchild holding the pipe
    // must not hold the job forever.
    let last = tokio::time::timeout(Duration::from_secs(1), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let mut st = shared.lock();
    st.procs.remove(&key);
    if let Some(n) = st.running.get_mut(&endpoint_id) {
        *n = n.saturating_sub(1);
    }
    if let Some(job) = st.jobs.get_mut(&id) {
        job.process = None;
        if job.state == FakeJobState::InProgress {
            let exit_code = status.as_ref().map(process::exit_code).ok();
            let outcome = last
                .and_then(|line| serde_json::from_str::<Value>(&line).ok())
                .unwrap_or(Value::Null);
            job.output = Some(json!({"exit_code": exit_code, "outcome": outcome}));
            job.finish(FakeJobState::Completed);
        }
    }
    pump(&shared, &mut st, &endpoint_id);
}

/// Copies stdout into the job's log and returns its last non-empty line.
async fn last_line(stdout: tokio::process::ChildStdout, log: std::path::PathBuf) -> Option<String> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .await
        .ok();
    let mut lines = BufReader::new(stdout).lines();
    let mut last = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(format!("{line}\n").as_bytes()).await;
        }
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    last
}

/// `GET /status/{id}`: `None` → 404.
pub(crate) fn status(shared: &Shared, endpoint_id: &str, id: &str) -> Option<Value> {
    let st = shared.lock();
    st.jobs
        .get(id)
        .filter(|j| j.endpoint == endpoint_id)
        .map(JobRecord::to_json)
}

/// `POST /cancel/{id}`: a queued or running job becomes CANCELLED (its process group killed);
/// a finished one keeps its state. `None` → 404.
pub(crate) fn cancel(shared: &Shared, endpoint_id: &str, id: &str) -> Option<Value> {
    let mut st = shared.lock();
    let found = st.jobs.get(id).is_some_and(|j| j.endpoint == endpoint_id);
    st.log_call(CallOp::Cancel {
        endpoint: endpoint_id.to_owned(),
        job_id: id.to_owned(),
        found,
    });
    if !found {
        return None;
    }
    if let Some(queue) = st.queues.get_mut(endpoint_id) {
        queue.retain(|q| q != id);
    }
    let job = st.jobs.get_mut(id).expect("checked above");
    if !job.state.is_terminal() {
        job.finish(FakeJobState::Cancelled);
        if let Some((_, pid)) = job.process {
            process::signal_group(pid, libc::SIGKILL);
        }
    }
    Some(json!({"id": id, "status": job.state.as_wire()}))
}

/// The worker running `id` dies: FAILED with the JSON-encoded error runpod-python reports.
pub(crate) fn kill(shared: &Shared, id: &str) -> bool {
    let mut st = shared.lock();
    let Some(job) = st.jobs.get_mut(id) else {
        return false;
    };
    if job.state != FakeJobState::InProgress {
        return false;
    }
    let error = json!({
        "error_type": "<class 'RuntimeError'>",
        "error_message": "worker died: the container was killed",
        "error_traceback": "",
        "hostname": "fake-runpod",
        "worker_id": format!("worker-{}", &job.id[..8.min(job.id.len())]),
        "runpod_version": "fake",
    });
    job.error = Some(error.to_string());
    job.finish(FakeJobState::Failed);
    if let Some((_, pid)) = job.process {
        process::signal_group(pid, libc::SIGKILL);
    }
    true
}

/// `GET /health`.
pub(crate) fn health(shared: &Shared, spec: &EndpointSpec) -> Value {
    let st = shared.lock();
    let count = |state: FakeJobState| {
        st.jobs
            .values()
            .filter(|j| j.endpoint == spec.id && j.state == state)
            .count()
    };
    let running = st.running.get(&spec.id).copied().unwrap_or(0);
    json!({
        "jobs": {
            "completed": count(FakeJobState::Completed),
            "failed": count(FakeJobState::Failed),
            "inProgress": count(FakeJobState::InProgress),
            "inQueue": count(FakeJobState::InQueue),
            "retried": 0,
        },
        "workers": {"idle": spec.max_workers.saturating_sub(running), "running": running},
    })
}
