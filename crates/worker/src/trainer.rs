//! Running the trainer: the child process, its JSON lines (`trainer/README.md`), and stopping it
//! when the worker is told to.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use loraforge_stdx::next_line;

use crate::checkpoints::Saved;
use crate::relay::{Feed, Step};
use crate::{Halt, TrainerCommand};

/// Between SIGTERM and SIGKILL when the worker stops the trainer. The trainer finishes its step
/// and writes a checkpoint first; this only bounds a trainer that hangs.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// How long to read the rest of the trainer's stdout after it exited (a process it left behind
/// could hold the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Longest stdout line kept, bytes; the rest of a longer line is dropped.
const MAX_LINE: usize = 256 * 1024;

/// The worker's own secret, which the trainer has no use for.
const TOKEN_ENV: &str = "LORAFORGE_WORKER_TOKEN";

/// How the trainer process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Code(i32),
    Signal(Option<i32>),
}

/// What the trainer said that the worker needs afterwards.
#[derive(Debug, Default)]
pub(crate) struct Said {
    /// The last `{"event":"error",…}` line, verbatim.
    pub last_error: Option<String>,
    /// The step of its `stopped` line.
    pub stopped_at: Option<u64>,
    pub done: Option<serde_json::Value>,
    pub validation: Option<serde_json::Value>,
    /// Where `checkpoint` lines go (the uploader), when checkpoints leave the host.
    pub checkpoints: Option<watch::Sender<Option<Saved>>>,
}

#[derive(Debug)]
pub(crate) struct TrainerRun {
    pub ended: Ended,
    /// Wall time from spawning the process to its exit.
    pub seconds: f64,
    pub said: Said,
    /// Whether the worker sent it SIGTERM.
    pub stopped_by_worker: bool,
    /// The worker stopped it for writing nothing for this long (a hung trainer).
    pub silent_for: Option<Duration>,
}

/// Where a training run reads and writes.
pub(crate) struct TrainerPaths<'a> {
    pub spec: &'a Path,
    pub images: &'a Path,
    pub out: &'a Path,
}

/// Runs `program args… train --spec … --images … --out … --resume` to its end: stdout's JSON lines
/// go into `said` and the `progress` snapshot; stderr is inherited; a halt sends the trainer
/// SIGTERM (SIGKILL after [`STOP_GRACE`]) and keeps reading until it has exited. The child is
/// killed if this future is dropped.
///
/// A trainer that writes nothing on stdout for `silence` is taken for hung and stopped the same
/// way (the worker's heartbeats would otherwise keep its job leased until the job timeout).
pub(crate) async fn run(
    cmd: &TrainerCommand,
    paths: TrainerPaths<'_>,
    progress: &Feed,
    checkpoints: Option<watch::Sender<Option<Saved>>>,
    mut halt: watch::Receiver<Option<Halt>>,
    silence: Duration,
) -> std::io::Result<TrainerRun> {
    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .arg("train")
        .arg("--spec")
        .arg(paths.spec)
        .arg("--images")
        .arg(paths.images)
        .arg("--out")
        .arg(paths.out)
        .arg("--resume")
        .env_remove(TOKEN_ENV)
        .envs(cmd.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // A backstop: every path below waits for the child, but a dropped future must not
        // leave a trainer running.
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn()?;
    let pid = child.id().and_then(|p| libc::pid_t::try_from(p).ok());
    tracing::info!(pid, program = %cmd.program.display(), "trainer started");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));

    let mut said = Said {
        checkpoints,
        ..Said::default()
    };
    let mut stdout_open = true;
    let mut halt_open = true;
    let mut term_sent: Option<Instant> = None;
    let mut kill_sent = false;
    let mut last_output = Instant::now();
    let mut silent_for = None;
    let status = loop {
        let kill_at = term_sent.map_or_else(Instant::now, |t| t + STOP_GRACE);
        tokio::select! {
            line = next_line(&mut stdout, MAX_LINE), if stdout_open => match line {
                Some(line) => {
                    last_output = Instant::now();
                    said.take(&line, progress)
                }
                None => stdout_open = false,
            },
            () = tokio::time::sleep_until(last_output + silence), if term_sent.is_none() => {
                tracing::warn!(silence = ?silence, "the trainer has written nothing for too long; stopping it (SIGTERM)");
                signal(pid, libc::SIGTERM);
                term_sent = Some(Instant::now());
                silent_for = Some(silence);
            }
            status = child.wait() => break status,
            h = async { halt.wait_for(Option::is_some).await.map(|h| (*h).clone()) }, if halt_open && term_sent.is_none() => {
                match h {
                    Ok(h) => {
                        tracing::info!(why = ?h, "stopping the trainer (SIGTERM)");
                        signal(pid, libc::SIGTERM);
                        term_sent = Some(Instant::now());
                    }
                    Err(_) => halt_open = false,
                }
            }
            () = tokio::time::sleep_until(kill_at), if term_sent.is_some() && !kill_sent => {
                tracing::warn!(grace = ?STOP_GRACE, "the trainer did not stop after SIGTERM; killing it");
                signal(pid, libc::SIGKILL);
                kill_sent = true;
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let status = status?;
    if stdout_open {
        let drained = tokio::time::timeout(OUTPUT_DRAIN, async {
            while let Some(line) = next_line(&mut stdout, MAX_LINE).await {
                said.take(&line, progress);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("the trainer's stdout stayed open after it exited; stopped reading");
        }
    }
    let ended = match status.code() {
        Some(code) => Ended::Code(code),
        None => Ended::Signal(std::os::unix::process::ExitStatusExt::signal(&status)),
    };
    tracing::info!(?ended, seconds, "trainer exited");
    Ok(TrainerRun {
        ended,
        seconds,
        said,
        stopped_by_worker: term_sent.is_some(),
        silent_for,
    })
}

/// Sends `sig` to the trainer. Only called before `wait` returned, so the pid is still ours
/// (at worst an unreaped zombie, for which the signal is a no-op).
fn signal(pid: Option<libc::pid_t>, sig: libc::c_int) {
    let Some(pid) = pid else { return };
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        tracing::debug!(pid, sig, error = %std::io::Error::last_os_error(), "kill");
    }
}

/// One stdout line of the trainer (`trainer/README.md`), as the worker reads it. The one
/// reading of those lines: the worker's own trainer and a provider's logs (`remote`) both go
/// through [`Line::parse`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Line {
    Stage(String),
    Progress(Step),
    /// The line verbatim (it is reported as is).
    Error(String),
    /// The step it stopped at, when it says.
    Stopped(Option<u64>),
    Checkpoint {
        step: u64,
        path: String,
    },
    Done(serde_json::Value),
    Validation(serde_json::Value),
    /// JSON of another event, or a progress line without its numbers.
    Other,
}

impl Line {
    /// `None` for a blank line or one that is not JSON.
    pub(crate) fn parse(line: &str) -> Option<Line> {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        let value = serde_json::from_str::<serde_json::Value>(line).ok()?;
        let event = value
            .get("event")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let num = |k: &str| value.get(k).and_then(serde_json::Value::as_f64);
        let int = |k: &str| value.get(k).and_then(serde_json::Value::as_u64);
        Some(match event {
            "stage" => match value.get("stage").and_then(serde_json::Value::as_str) {
                Some(stage) => Line::Stage(stage.to_owned()),
                None => Line::Other,
            },
            "progress" => match (int("step"), int("total")) {
                (Some(step), Some(total)) => Line::Progress(Step {
                    step,
                    total,
                    loss: num("loss"),
                    eta_s: num("eta_s"),
                }),
                _ => Line::Other,
            },
            "error" => Line::Error(line.to_owned()),
            "stopped" => Line::Stopped(int("step")),
            "checkpoint" => match (int("step"), value.get("path").and_then(|p| p.as_str())) {
                (Some(step), Some(path)) => Line::Checkpoint {
                    step,
                    path: path.to_owned(),
                },
                _ => Line::Other,
            },
            "done" => Line::Done(value),
            "validation" => Line::Validation(value),
            _ => Line::Other,
        })
    }
}

impl Said {
    /// Takes in one stdout line.
    fn take(&mut self, line: &str, progress: &Feed) {
        let Some(parsed) = Line::parse(line) else {
            tracing::debug!("trainer stdout (not JSON): {}", line.trim());
            return;
        };
        match parsed {
            Line::Stage(stage) => {
                tracing::info!(stage, "trainer stage");
                progress.stage(&stage);
            }
            Line::Progress(step) => {
                tracing::debug!(step = step.step, total = step.total, "trainer progress");
                progress.step(step);
            }
            Line::Error(line) => {
                tracing::warn!("trainer error: {line}");
                self.last_error = Some(line);
            }
            Line::Stopped(step) => {
                tracing::info!("trainer stopped: {}", line.trim());
                self.stopped_at = step;
            }
            Line::Checkpoint { step, path } => {
                if let Some(tx) = &self.checkpoints {
                    tracing::debug!(step, "trainer checkpoint");
                    tx.send_replace(Some(Saved {
                        step,
                        path: path.into(),
                    }));
                }
            }
            Line::Done(value) => self.done = Some(value),
            Line::Validation(value) => self.validation = Some(value),
            Line::Other => tracing::debug!("trainer: {}", line.trim()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_lines_fill_what_the_worker_needs() {
        let (feed, mut rx) = crate::relay::feed();
        let mut said = Said::default();
        for line in [
            r#"{"event":"stage","stage":"loading_model"}"#,
            r#"{"event":"stage","stage":"training"}"#,
            r#"{"event":"progress","step":2,"total":10,"loss":0.2,"eta_s":4}"#,
            r#"{"event":"progress","step":3,"total":10,"loss":null,"eta_s":3.5}"#,
            "not json",
            r#"{"event":"checkpoint","step":4,"path":"/x"}"#,
            r#"{"event":"validation","images":[],"scores":[0.5,0.6,0.7]}"#,
            r#"{"event":"error","code":"non_finite_loss","reason":"non-finite loss at step 4","exit_code":3}"#,
            r#"{"event":"stopped","step":4,"reason":"signal SIGTERM","checkpoint":"/x"}"#,
            r#"{"event":"done","train_seconds":4.1}"#,
        ] {
            said.take(line, &feed);
        }
        assert_eq!(
            rx.stages(),
            ["loading_model", "training"],
            "every stage, in order"
        );
        assert_eq!(
            rx.newest_step(),
            Some(Step {
                step: 3,
                total: 10,
                loss: None,
                eta_s: Some(3.5)
            })
        );
        assert!(
            said.last_error
                .as_deref()
                .unwrap()
                .contains("non_finite_loss")
        );
        assert_eq!(said.stopped_at, Some(4));
        assert_eq!(said.done.unwrap()["train_seconds"], 4.1);
        assert!(said.validation.is_some());
    }
}
