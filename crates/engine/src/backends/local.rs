//! The `local` backend: one child process per run on this machine.
//!
//! Each run gets its own process group, so stopping it reaches everything it started: `cancel`
//! sends SIGTERM to the group (the trainer checkpoints and exits 10), then SIGKILL after
//! `kill_grace`. A supervisor task per run owns the child (`kill_on_drop`), reads its stdout line
//! by line into progress reports, and records how it ended. Dropping the backend kills every run
//! it still has (SIGKILL to each group): a run nobody watches must not outlive its engine.
//! At most `max_concurrent` runs at once (a semaphore permit per run, released when the run has
//! ended and its group is gone).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use loraforge_domain::LoraId;
use loraforge_stdx::next_line;

use crate::backend::{BackendError, JobSpec, RunId, RunReport, RunState, TrainingBackend, io_is_retryable};
use crate::trainer_line::{ProgressTracker, TrainerLine};

/// How the local backend runs a job.
#[derive(Debug, Clone)]
pub struct LocalBackendSettings {
    /// The backend's name in the database. Default "local".
    pub name: String,
    /// The program to run per job (later `loraforge worker`).
    pub program: PathBuf,
    /// Its arguments. Placeholders: `{spec}` (path of the job spec JSON), `{out}` (the job's
    /// output folder, the same for every attempt so a run can resume), `{lora_id}`, `{attempt}`.
    pub args_template: Vec<String>,
    /// Extra environment for the child, on top of this process's. The child also gets
    /// `LORAFORGE_LORA_ID`, `LORAFORGE_ATTEMPT`, `LORAFORGE_SPEC` and `LORAFORGE_OUT`.
    pub env: Vec<(String, String)>,
    /// Variables of this process the child must not inherit (the service's own secrets).
    pub env_remove: Vec<String>,
    /// Where job folders live: `<work_dir>/<lora_id>/` holds `spec-<attempt>.json` and `out/`.
    pub work_dir: PathBuf,
    /// Runs at once on this host.
    pub max_concurrent: usize,
    /// Between SIGTERM and SIGKILL when a run is cancelled. Default 10 s (a cancel must take
    /// effect within 30 s).
    pub kill_grace: Duration,
}

impl LocalBackendSettings {
    pub fn new(program: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: "local".to_owned(),
            program: program.into(),
            args_template: vec!["--spec".into(), "{spec}".into(), "--out".into(), "{out}".into()],
            env: Vec::new(),
            env_remove: Vec::new(),
            work_dir: work_dir.into(),
            max_concurrent: 1,
            kill_grace: Duration::from_secs(10),
        }
    }
}

/// How a run is doing, shared between the backend and the run's supervisor.
#[derive(Debug, Clone)]
enum Phase {
    Running,
    Exited { code: Option<i32>, reason: Option<String>, retryable: bool },
}

#[derive(Debug)]
struct Run {
    lora_id: LoraId,
    pid: Option<u32>,
    phase: Arc<Mutex<Phase>>,
    /// Graceful stop. Taken by the first `cancel`; dropping it (with the backend) kills at once.
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Debug)]
pub struct LocalBackend {
    settings: LocalBackendSettings,
    slots: Arc<Semaphore>,
    runs: Mutex<HashMap<RunId, Run>>,
    reports_tx: mpsc::UnboundedSender<RunReport>,
    reports_rx: Mutex<mpsc::UnboundedReceiver<RunReport>>,
}

/// Ended runs remembered for `status`; older ones are forgotten first.
const REMEMBERED_ENDED_RUNS: usize = 1024;

/// Longest output line kept, bytes; the rest of a longer line is dropped (trainer lines are
/// well under 4 KiB; this only bounds what a misbehaving child can make us hold).
const MAX_LINE: usize = 64 * 1024;

/// How long to wait for the rest of a run's stdout after its process group is gone.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalBackend {
    pub fn new(settings: LocalBackendSettings) -> Self {
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        Self {
            slots: Arc::new(Semaphore::new(settings.max_concurrent)),
            settings,
            runs: Mutex::new(HashMap::new()),
            reports_tx,
            reports_rx: Mutex::new(reports_rx),
        }
    }

    /// The process id of a run's first process (also its process group id), while known.
    pub fn pid(&self, run: &RunId) -> Option<u32> {
        lock(&self.runs).get(run).and_then(|r| r.pid)
    }

    fn args(&self, spec: &Path, out: &Path, job: &JobSpec) -> Vec<String> {
        self.settings
            .args_template
            .iter()
            .map(|a| {
                a.replace("{spec}", &spec.to_string_lossy())
                    .replace("{out}", &out.to_string_lossy())
                    .replace("{lora_id}", &job.lora_id.to_string())
                    .replace("{attempt}", &job.attempt.to_string())
            })
            .collect()
    }

    /// Forgets the oldest ended runs beyond [`REMEMBERED_ENDED_RUNS`].
    fn prune(runs: &mut HashMap<RunId, Run>) {
        let ended: Vec<RunId> = runs
            .iter()
            .filter(|(_, r)| matches!(*lock(&r.phase), Phase::Exited { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        if ended.len() > REMEMBERED_ENDED_RUNS {
            // Run ids are not ordered by time; any ended run will do, they are all done.
            for id in ended.into_iter().take(runs.len().saturating_sub(REMEMBERED_ENDED_RUNS)) {
                runs.remove(&id);
            }
        }
    }
}

#[async_trait]
impl TrainingBackend for LocalBackend {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn capacity(&self) -> usize {
        self.slots.available_permits()
    }

    async fn start(&self, spec: &JobSpec) -> Result<RunId, BackendError> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| BackendError::NoCapacity)?;
        let job_dir = self.settings.work_dir.join(spec.lora_id.to_string());
        let out = job_dir.join("out");
        tokio::fs::create_dir_all(&out).await?;
        let spec_path = job_dir.join(format!("spec-{}.json", spec.attempt));
        let json = serde_json::to_vec_pretty(spec).map_err(|e| BackendError::Permanent(format!("job spec: {e}")))?;
        tokio::fs::write(&spec_path, json).await?;

        let mut cmd = Command::new(&self.settings.program);
        for k in &self.settings.env_remove {
            cmd.env_remove(k);
        }
        cmd.args(self.args(&spec_path, &out, spec))
            .envs(self.settings.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("LORAFORGE_LORA_ID", spec.lora_id.to_string())
            .env("LORAFORGE_ATTEMPT", spec.attempt.to_string())
            .env("LORAFORGE_SPEC", &spec_path)
            .env("LORAFORGE_OUT", &out)
            // The token goes by environment: arguments are visible to every user in `ps`.
            .env("LORAFORGE_WORKER_TOKEN", spec.worker_token.as_deref().unwrap_or(""))
            .current_dir(&job_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group (pgid = its pid), so signals reach everything it starts.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            let what = format!("cannot run {}: {e}", self.settings.program.display());
            if io_is_retryable(&e) { BackendError::Transient(what) } else { BackendError::Permanent(what) }
        })?;
        let pid = child.id();
        let run_id = RunId(format!("local-{}", uuid::Uuid::new_v4().simple()));
        let phase = Arc::new(Mutex::new(Phase::Running));
        let (stop_tx, stop_rx) = oneshot::channel();

        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let last_error = Arc::new(Mutex::new(None::<RunError>));
        let readers = tokio::spawn(read_output(
            stdout,
            stderr,
            run_id.clone(),
            spec.lora_id,
            self.reports_tx.clone(),
            last_error.clone(),
        ));
        tokio::spawn(supervise(Supervised {
            child,
            pgid: pid.and_then(|p| i32::try_from(p).ok()),
            stop: stop_rx,
            grace: self.settings.kill_grace,
            readers,
            last_error,
            phase: phase.clone(),
            run_id: run_id.clone(),
            _permit: permit,
        }));

        let mut runs = lock(&self.runs);
        Self::prune(&mut runs);
        runs.insert(run_id.clone(), Run { lora_id: spec.lora_id, pid, phase, stop: Some(stop_tx) });
        tracing::info!(run = %run_id, lora = %spec.lora_id, pid, "local run started");
        Ok(run_id)
    }

    async fn status(&self, run: &RunId) -> Result<RunState, BackendError> {
        let runs = lock(&self.runs);
        let Some(r) = runs.get(run) else { return Ok(RunState::Unknown) };
        let phase = lock(&r.phase).clone();
        Ok(match phase {
            Phase::Running => RunState::Running,
            Phase::Exited { code, reason, retryable } => RunState::Exited { code, reason, retryable },
        })
    }

    async fn cancel(&self, run: &RunId) -> Result<(), BackendError> {
        let mut runs = lock(&self.runs);
        if let Some(r) = runs.get_mut(run)
            && let Some(stop) = r.stop.take()
        {
            tracing::info!(run = %run, lora = %r.lora_id, "stopping local run");
            // The supervisor may have finished already; then there is nothing to stop.
            let _ = stop.send(());
        }
        Ok(())
    }

    /// SIGTERM to every live run, then waits for them to end (SIGKILL after `kill_grace`).
    async fn shutdown(&self) {
        let phases: Vec<Arc<Mutex<Phase>>> = {
            let mut runs = lock(&self.runs);
            runs.values_mut()
                .filter_map(|r| {
                    let stop = r.stop.take()?;
                    let _ = stop.send(());
                    Some(r.phase.clone())
                })
                .collect()
        };
        if phases.is_empty() {
            return;
        }
        tracing::info!(runs = phases.len(), "stopping local runs");
        let deadline = tokio::time::Instant::now() + self.settings.kill_grace + Duration::from_secs(2);
        while phases.iter().any(|p| matches!(*lock(p), Phase::Running)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes the job's folder (`<work_dir>/<lora_id>`): specs and checkpoints. A folder that
    /// still holds trained files whose upload never succeeded (`out/result.json`, kept by the
    /// worker) is left where it is, with a warning: a trained file is never deleted unpublished.
    async fn release(&self, run: &RunId, lora: LoraId) {
        let dir = self.settings.work_dir.join(lora.to_string());
        if tokio::fs::try_exists(dir.join("out").join("result.json")).await.unwrap_or(true) {
            tracing::warn!(run = %run, lora = %lora, dir = %dir.display(),
                "the job ended with trained files that were never uploaded; they are kept here");
            return;
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => tracing::debug!(run = %run, dir = %dir.display(), "job folder removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(run = %run, dir = %dir.display(), error = %e, "could not remove a job folder"),
        }
    }

    fn drain_reports(&self) -> Vec<RunReport> {
        let mut rx = lock(&self.reports_rx);
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        out
    }
}

/// Sends `signal` to process group `pgid`; a group that is already gone is fine.
fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg has no memory-safety preconditions; a stale or foreign pgid can only make
    // it fail (ESRCH/EPERM), which is ignored: the group is then gone or not ours.
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc != 0 {
        tracing::debug!(pgid, signal, error = %std::io::Error::last_os_error(), "killpg");
    }
}

/// Kills a run's whole group when dropped unless disarmed: covers the supervisor task being
/// dropped (runtime shutdown) before it could clean up.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            signal_group(pgid, libc::SIGKILL);
        }
    }
}

struct Supervised {
    child: Child,
    pgid: Option<i32>,
    stop: oneshot::Receiver<()>,
    grace: Duration,
    readers: tokio::task::JoinHandle<()>,
    last_error: Arc<Mutex<Option<RunError>>>,
    phase: Arc<Mutex<Phase>>,
    run_id: RunId,
    _permit: OwnedSemaphorePermit,
}

/// Waits for the run to end, stopping it when asked (or when the backend is dropped), then
/// records how it ended. The slot is freed when this returns.
async fn supervise(mut s: Supervised) {
    let guard = GroupGuard(s.pgid);
    let kill = |signal| {
        if let Some(pgid) = s.pgid {
            signal_group(pgid, signal);
        }
    };
    let status = tokio::select! {
        status = s.child.wait() => status,
        stop = &mut s.stop => {
            if stop.is_ok() {
                kill(libc::SIGTERM);
                match tokio::time::timeout(s.grace, s.child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        tracing::warn!(run = %s.run_id, "run ignored SIGTERM; killing it");
                        kill(libc::SIGKILL);
                        s.child.wait().await
                    }
                }
            } else {
                // The backend is gone: nobody will watch this run any more.
                kill(libc::SIGKILL);
                s.child.wait().await
            }
        }
    };
    // Whatever the first process left behind in its group goes with it (the guard's SIGKILL).
    drop(guard);
    if tokio::time::timeout(OUTPUT_DRAIN, &mut s.readers).await.is_err() {
        s.readers.abort();
    }
    let (code, reason, retryable) = match status {
        Ok(st) => {
            let error = lock(&s.last_error).clone();
            (st.code(), error.as_ref().map(|e| e.reason.clone()), error.is_some_and(|e| e.retryable))
        }
        Err(e) => (None, Some(format!("could not wait for the worker: {e}")), false),
    };
    tracing::info!(run = %s.run_id, ?code, ?reason, retryable, "local run ended");
    *lock(&s.phase) = Phase::Exited { code, reason, retryable };
}

/// The worker's own account of a failure: the reason of its last `error` line (else its last
/// stderr line) and whether it said the failure may pass.
#[derive(Debug, Clone)]
struct RunError {
    reason: String,
    retryable: bool,
}

/// Reads the trainer's stdout (JSON lines → progress reports; the `error` line's reason is
/// kept) and its stderr (human logs → tracing; the last line is the fallback reason).
async fn read_output(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    run_id: RunId,
    lora_id: LoraId,
    reports: mpsc::UnboundedSender<RunReport>,
    last_error: Arc<Mutex<Option<RunError>>>,
) {
    let last_stderr = Arc::new(Mutex::new(None::<String>));
    let err_task = stderr.map(|stderr| {
        let last = last_stderr.clone();
        let run_id = run_id.clone();
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr);
            while let Some(line) = next_line(&mut stderr, MAX_LINE).await {
                tracing::debug!(run = %run_id, "worker: {line}");
                if !line.trim().is_empty() {
                    *lock(&last) = Some(line);
                }
            }
        })
    });
    let mut saw_error = false;
    if let Some(stdout) = stdout {
        let mut tracker = ProgressTracker::default();
        let mut stdout = BufReader::new(stdout);
        while let Some(line) = next_line(&mut stdout, MAX_LINE).await {
            let parsed = TrainerLine::parse(&line);
            if let TrainerLine::Error { reason, retryable, .. } = &parsed {
                *lock(&last_error) = Some(RunError { reason: reason.clone(), retryable: *retryable });
                saw_error = true;
            }
            if let Some(progress) = tracker.apply(&parsed) {
                // The engine may be gone; then nobody needs the report.
                let _ = reports.send(RunReport { run_id: run_id.clone(), lora_id, progress });
            }
        }
    }
    if let Some(t) = err_task {
        let _ = t.await;
    }
    if !saw_error {
        let fallback = lock(&last_stderr).take();
        *lock(&last_error) = fallback.map(|reason| RunError { reason, retryable: false });
    }
}
