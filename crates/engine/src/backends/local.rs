//! The `local` backend: one child process (`loraforge worker`) per run on this machine.
//!
//! Every attempt has its own scratch folder, `<work_dir>/<lora>/attempt-<n>`: two attempts never
//! share mutable files, even when a crash of the service leaves an earlier attempt's worker
//! still stopping (or a worker the service started but never recorded). What an attempt leaves
//! there (the trainer's checkpoints; files trained but never uploaded, with `result.json`) is
//! handed to the job's next attempt by the engine once the attempt's process group is confirmed
//! gone ([`TrainingBackend::retire`]: the folder becomes `<lora>/handover`, which the next launch
//! renames to its own folder), so a later attempt still resumes from the checkpoints and uploads
//! what an earlier one trained. Only the attempt itself and, after it is gone, the engine touch
//! an attempt's folder. Each run gets its own process group, so stopping it reaches everything
//! it started: SIGTERM to the group (the worker stops its trainer, which checkpoints), then
//! SIGKILL after `kill_grace`. A supervisor task per run owns the child (`kill_on_drop`) and
//! records how it ended. Dropping the backend kills every run it still has: a run nobody watches
//! must not outlive its engine.
//!
//! A run is named by `local:<pid>:<start time>` (the kernel's start time of the process, from
//! `/proc`), so an engine restarted on the same host still recognises, and can end, a worker
//! its predecessor started: such a run is gone once no process of its group is left (a worker
//! that died before its trainer does not make the run gone).
//!
//! `process.rs` names runs and asks `/proc` and the kernel about them; `supervise.rs` owns each
//! run's child and its output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::oneshot;

use loraforge_domain::{LoraId, outcome};

use crate::backend::{
    BackendError, Ending, Instance, Launch, Launched, Observed, Scope, Task, Termination,
    TrainingBackend,
};

mod process;
mod supervise;

use process::{
    foreign_alive, group_alive, parse_provider_id, process_start, provider_id, signal_group,
    still_running,
};
use supervise::{Supervised, read_output, supervise};

/// How the local backend runs a job.
#[derive(Debug, Clone)]
pub struct LocalBackendSettings {
    /// The backend's name in the database. Default "local".
    pub name: String,
    /// The program to run per job (`loraforge worker`).
    pub program: PathBuf,
    /// Its arguments. Placeholders: `{out}` (the run's scratch folder), `{lora_id}`, `{attempt}`.
    pub args_template: Vec<String>,
    /// Extra environment for the child, on top of this process's and the worker's variables
    /// (`LORAFORGE_SERVER`, `LORAFORGE_LORA_ID`, `LORAFORGE_WORKER_TOKEN`).
    pub env: Vec<(String, String)>,
    /// Variables of this process the child must not inherit (the service's own secrets).
    pub env_remove: Vec<String>,
    /// Where job folders live: `<work_dir>/<lora_id>/attempt-<n>`.
    pub work_dir: PathBuf,
    /// Runs at once on this host.
    pub max_concurrent: usize,
    /// Between SIGTERM and SIGKILL when a run is stopped. Default 10 s (a cancel must take
    /// effect within 30 s).
    pub kill_grace: Duration,
    /// How long a worker that finished may take to exit on its own before it is stopped.
    pub finish_grace: Duration,
    /// What this host costs per hour while a run goes (`LORAFORGE_LOCAL_PRICE_PER_HOUR`; none
    /// or 0 records runs at no cost).
    pub price_per_hour: Option<loraforge_domain::MicroUsd>,
}

impl LocalBackendSettings {
    pub fn new(program: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: "local".to_owned(),
            program: program.into(),
            args_template: vec!["--out".into(), "{out}".into()],
            env: Vec::new(),
            env_remove: Vec::new(),
            work_dir: work_dir.into(),
            max_concurrent: 1,
            kill_grace: Duration::from_secs(10),
            finish_grace: Duration::from_secs(10),
            price_per_hour: None,
        }
    }
}

/// How a supervised run is doing.
#[derive(Debug, Clone)]
enum Phase {
    Running,
    Exited {
        code: Option<i32>,
        line: Option<ErrorLine>,
    },
}

/// The worker's own last word on stdout (`{"event":"error","code",…,"reason",…}`), else its last
/// stderr line as the reason.
#[derive(Debug, Clone)]
struct ErrorLine {
    code: Option<String>,
    reason: String,
}

#[derive(Debug)]
struct Run {
    phase: Arc<Mutex<Phase>>,
    /// Graceful stop. Taken by the first stop; dropping it (with the backend) kills at once.
    stop: Option<oneshot::Sender<()>>,
    /// When the engine first asked a finished run to end.
    finish_asked: Option<Instant>,
}

#[derive(Debug)]
pub struct LocalBackend {
    settings: LocalBackendSettings,
    runs: Mutex<HashMap<String, Run>>,
    /// Processes of an earlier engine on this host that this one was asked to end: when the
    /// SIGTERM went out.
    foreign_stops: Mutex<HashMap<String, Instant>>,
    /// Runs an earlier engine on this host started that this one found still running and now
    /// watches (adopted): stopped with this engine's own runs at shutdown.
    adopted: Mutex<std::collections::HashSet<String>>,
}

/// Ended runs remembered; older ones are forgotten first.
const REMEMBERED_ENDED_RUNS: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The name of an attempt's scratch folder under the job's folder.
fn attempt_dir(attempt: u32) -> String {
    format!("attempt-{attempt}")
}

/// What an ended attempt left for the next one, under the job's folder.
const HANDOVER: &str = "handover";

/// The folder holds files trained but never uploaded (`result.json`, kept by the worker).
async fn holds_trained_files(dir: &Path) -> bool {
    use std::io::ErrorKind::{NotADirectory, NotFound};
    match tokio::fs::metadata(dir.join("result.json")).await {
        Ok(_) => true,
        Err(e) if matches!(e.kind(), NotFound | NotADirectory) => false,
        // Unreadable: assume it is there (a trained file is never deleted unpublished).
        Err(_) => true,
    }
}

/// The folder holds something a next attempt can use: trained files or the trainer's outputs
/// (its checkpoints).
async fn worth_handing_over(dir: &Path) -> bool {
    if holds_trained_files(dir).await {
        return true;
    }
    match tokio::fs::read_dir(dir.join("train")).await {
        Ok(mut entries) => matches!(entries.next_entry().await, Ok(Some(_))),
        Err(_) => false,
    }
}

async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => tracing::debug!(dir = %dir.display(), "scratch folder removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a scratch folder")
        }
    }
}

impl LocalBackend {
    pub fn new(settings: LocalBackendSettings) -> Self {
        Self {
            settings,
            runs: Mutex::new(HashMap::new()),
            foreign_stops: Mutex::new(HashMap::new()),
            adopted: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The process id of a run's first process (also its process group id), if it is ours.
    pub fn pid(provider_id: &str) -> Option<u32> {
        parse_provider_id(provider_id).map(|(pid, _)| pid)
    }

    fn args(&self, out: &Path, launch: &Launch) -> Vec<String> {
        self.settings
            .args_template
            .iter()
            .map(|a| {
                a.replace("{out}", &out.to_string_lossy())
                    .replace("{lora_id}", &launch.lora_id.to_string())
                    .replace("{attempt}", &launch.attempt.to_string())
            })
            .collect()
    }

    fn live_runs(&self) -> usize {
        lock(&self.runs)
            .values()
            .filter(|r| matches!(*lock(&r.phase), Phase::Running))
            .count()
    }

    /// Forgets the oldest ended runs beyond [`REMEMBERED_ENDED_RUNS`].
    fn prune(runs: &mut HashMap<String, Run>) {
        let ended: Vec<String> = runs
            .iter()
            .filter(|(_, r)| matches!(*lock(&r.phase), Phase::Exited { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        if ended.len() > REMEMBERED_ENDED_RUNS {
            for id in ended
                .into_iter()
                .take(runs.len().saturating_sub(REMEMBERED_ENDED_RUNS))
            {
                runs.remove(&id);
            }
        }
    }

    /// Ends a process an earlier engine on this host started: SIGTERM to its group, SIGKILL once
    /// `kill_grace` has passed. Gone when the process is.
    /// SIGTERM to every adopted run still alive, SIGKILL to what is left after `kill_grace`.
    async fn stop_adopted(&self) {
        let adopted: Vec<String> = lock(&self.adopted).drain().collect();
        let mut live: Vec<String> = adopted
            .into_iter()
            .filter(|p| !self.end_foreign(p))
            .collect();
        if live.is_empty() {
            return;
        }
        tracing::info!(runs = live.len(), "stopping adopted local runs");
        let deadline =
            tokio::time::Instant::now() + self.settings.kill_grace + Duration::from_secs(2);
        while !live.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // end_foreign is true once the group is gone, and escalates to SIGKILL in time.
            live.retain(|p| !self.end_foreign(p));
        }
    }

    fn end_foreign(&self, provider: &str) -> bool {
        let Some((pid, start)) = parse_provider_id(provider) else {
            return true;
        };
        if !foreign_alive(pid, start) {
            lock(&self.foreign_stops).remove(provider);
            return true;
        }
        let Ok(pgid) = i32::try_from(pid) else {
            return true;
        };
        let mut stops = lock(&self.foreign_stops);
        match stops.get(provider) {
            None => {
                tracing::info!(
                    pid,
                    "stopping a worker an earlier engine on this host started"
                );
                signal_group(pgid, libc::SIGTERM);
                stops.insert(provider.to_owned(), Instant::now());
            }
            Some(at) if at.elapsed() >= self.settings.kill_grace => {
                signal_group(pgid, libc::SIGKILL)
            }
            Some(_) => {}
        }
        false
    }
}

#[async_trait]
impl TrainingBackend for LocalBackend {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn max_runs(&self) -> usize {
        self.settings.max_concurrent
    }

    fn scope(&self) -> Scope {
        Scope::Engine
    }

    fn runs_samples(&self) -> bool {
        true
    }

    async fn launch(&self, launch: &Launch) -> Result<Launched, BackendError> {
        if self.live_runs() >= self.settings.max_concurrent {
            return Err(BackendError::NoCapacity(format!(
                "all {} local training slots are busy",
                self.settings.max_concurrent
            )));
        }
        let job_dir = self.settings.work_dir.join(launch.lora_id.to_string());
        let out = match launch.task {
            Task::Train => {
                let out = job_dir.join(attempt_dir(launch.attempt));
                // What the job's earlier attempts left, handed over once they were gone,
                // becomes this attempt's folder. (A folder of this attempt already there is
                // from a launch of it that failed before a process ran.)
                let handover = job_dir.join(HANDOVER);
                if !tokio::fs::try_exists(&out).await? && tokio::fs::try_exists(&handover).await? {
                    tokio::fs::rename(&handover, &out).await?;
                    tracing::info!(lora = %launch.lora_id, attempt = launch.attempt, "continuing in what earlier attempts left");
                }
                out
            }
            // A sample attempt's own scratch folder; its worker empties it once the images are
            // stored (nothing is handed over between sample attempts).
            Task::Sample { batch } => job_dir
                .join("samples")
                .join(format!("{batch}-{}", launch.attempt)),
        };
        tokio::fs::create_dir_all(&out).await?;

        let mut cmd = Command::new(&self.settings.program);
        for k in &self.settings.env_remove {
            cmd.env_remove(k);
        }
        cmd.args(self.args(&out, launch))
            .envs(
                self.settings
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            // The token goes by environment: arguments are visible to every user in `ps`.
            .envs(launch.worker_env())
            .current_dir(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group (pgid = its pid), so signals reach everything it starts.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            let what = format!("cannot run {}: {e}", self.settings.program.display());
            if crate::backend::io_is_retryable(&e) {
                BackendError::Transient(what)
            } else {
                BackendError::Permanent(what)
            }
        })?;
        let pid = child
            .id()
            .ok_or_else(|| BackendError::Transient("the worker exited at once".into()))?;
        let start = process_start(pid).unwrap_or(0);
        let id = provider_id(pid, start);
        let phase = Arc::new(Mutex::new(Phase::Running));
        let (stop_tx, stop_rx) = oneshot::channel();
        let last = Arc::new(Mutex::new(None::<ErrorLine>));
        let readers = tokio::spawn(read_output(
            child.stdout.take(),
            child.stderr.take(),
            id.clone(),
            last.clone(),
        ));
        tokio::spawn(supervise(Supervised {
            child,
            pgid: i32::try_from(pid).ok(),
            stop: stop_rx,
            grace: self.settings.kill_grace,
            readers,
            last,
            phase: phase.clone(),
            id: id.clone(),
        }));
        let mut runs = lock(&self.runs);
        Self::prune(&mut runs);
        runs.insert(
            id.clone(),
            Run {
                phase,
                stop: Some(stop_tx),
                finish_asked: None,
            },
        );
        tracing::info!(run = %id, lora = %launch.lora_id, attempt = launch.attempt, out = %out.display(), "local run started");
        Ok(Launched {
            provider_id: id,
            gpu_type: None,
            price_per_hour: self.settings.price_per_hour,
        })
    }

    async fn observe(&self, instances: &[Instance]) -> Result<Vec<Observed>, BackendError> {
        let runs = lock(&self.runs);
        Ok(instances
            .iter()
            .map(
                |i| match runs.get(&i.provider_id).map(|r| lock(&r.phase).clone()) {
                    Some(Phase::Running) => Observed::Running,
                    Some(Phase::Exited { code, line }) => {
                        let code_from_line = line
                            .as_ref()
                            .and_then(|l| l.code.as_deref())
                            .and_then(outcome::spec)
                            .map(|s| s.code);
                        let outcome =
                            code_from_line.unwrap_or_else(|| outcome::from_exit(code).code);
                        let reason = line.map(|l| l.reason).or_else(|| {
                            Some(match code {
                                Some(c) => format!("the worker exited with status {c}"),
                                None => "the worker was killed by a signal".to_owned(),
                            })
                        });
                        Observed::Ended {
                            outcome,
                            reason,
                            gone: true,
                        }
                    }
                    // Started by an earlier engine on this host (before a restart of the service).
                    // Its worker outlives a crash of the service (it is not the service's
                    // child in spirit: it keeps training and reporting over HTTP), so this
                    // engine adopts it and watches it to its end.
                    None => match parse_provider_id(&i.provider_id) {
                        Some((pid, start)) if still_running(pid, start) => {
                            lock(&self.adopted).insert(i.provider_id.clone());
                            Observed::Running
                        }
                        parsed => Observed::Ended {
                            outcome: "lost",
                            reason: Some(
                                "the service restarted and the run's worker had stopped with it"
                                    .into(),
                            ),
                            // Its trainer may still be stopping: gone with the last of its group.
                            gone: parsed.is_none_or(|(pid, _)| !group_alive(pid)),
                        },
                    },
                },
            )
            .collect())
    }

    async fn terminate(
        &self,
        instance: &Instance,
        ending: Ending,
    ) -> Result<Termination, BackendError> {
        let ended = |gone| {
            Ok(Termination {
                gone,
                billed_millis: None,
            })
        };
        let mut runs = lock(&self.runs);
        let Some(run) = runs.get_mut(&instance.provider_id) else {
            drop(runs);
            return ended(self.end_foreign(&instance.provider_id));
        };
        if matches!(*lock(&run.phase), Phase::Exited { .. }) {
            return ended(true);
        }
        let stop_now = match ending {
            Ending::Stop => true,
            Ending::Finished => {
                run.finish_asked.get_or_insert_with(Instant::now).elapsed()
                    >= self.settings.finish_grace
            }
        };
        if stop_now && let Some(stop) = run.stop.take() {
            tracing::info!(run = %instance.provider_id, lora = %instance.lora_id, "stopping local run");
            // The supervisor may have finished already; then there is nothing to stop.
            let _ = stop.send(());
        }
        ended(false)
    }

    /// The attempt's folder, its process group gone: handed over to the job's next attempt
    /// (`<lora>/handover`) when it holds checkpoints or trained files, else deleted. Trained
    /// files already handed over are never replaced by a folder without them.
    async fn retire(&self, instance: &Instance) {
        let job_dir = self.settings.work_dir.join(instance.lora_id.to_string());
        let dir = job_dir.join(attempt_dir(instance.attempt));
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return;
        }
        let handover = job_dir.join(HANDOVER);
        if !worth_handing_over(&dir).await
            || (holds_trained_files(&handover).await && !holds_trained_files(&dir).await)
        {
            remove_dir(&dir).await;
            return;
        }
        remove_dir(&handover).await;
        match tokio::fs::rename(&dir, &handover).await {
            Ok(()) => {
                tracing::info!(lora = %instance.lora_id, attempt = instance.attempt, "scratch folder handed to the next attempt")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not hand a scratch folder over; the next attempt starts afresh")
            }
        }
    }

    /// Deletes the job's folder (`<work_dir>/<lora_id>`): checkpoints and scratch of every
    /// attempt. A folder that still holds trained files whose upload never succeeded
    /// (`result.json` in an attempt's folder or the handover, kept by the worker) is left where
    /// it is, with a warning: a trained file is never deleted unpublished. Once the LoRA is
    /// published (a worker whose result was recorded but whose answer a crash cut off kept
    /// them), they go too.
    async fn release(&self, lora: LoraId, published: bool) {
        let dir = self.settings.work_dir.join(lora.to_string());
        if published {
            remove_dir(&dir).await;
            return;
        }
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not read a job folder");
                return;
            }
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            if holds_trained_files(&entry.path()).await {
                tracing::warn!(lora = %lora, dir = %entry.path().display(),
                    "the job ended with trained files that were never uploaded; they are kept here");
                return;
            }
        }
        remove_dir(&dir).await;
    }

    /// SIGTERM to every live run, then waits for them to end (SIGKILL after `kill_grace`).
    async fn shutdown(&self) {
        self.stop_adopted().await;
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
        let deadline =
            tokio::time::Instant::now() + self.settings.kill_grace + Duration::from_secs(2);
        while phases.iter().any(|p| matches!(*lock(p), Phase::Running))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
