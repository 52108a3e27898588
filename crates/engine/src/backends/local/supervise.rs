//! A local run's supervisor: owns the child, stops it when asked (SIGTERM to its group, SIGKILL
//! after the grace), reads its output, and records how it ended.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, BufReader};
use tokio::process::Child;
use tokio::sync::oneshot;

use loraforge_stdx::next_line;

use super::process::{GroupGuard, signal_group};
use super::{ErrorLine, Phase, lock};

/// Longest output line kept, bytes; the rest of a longer line is dropped.
const MAX_LINE: usize = 64 * 1024;

/// How long to wait for the rest of a run's output after its process group is gone.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// What the supervisor of one run owns.
pub(super) struct Supervised {
    pub(super) child: Child,
    pub(super) pgid: Option<i32>,
    pub(super) stop: oneshot::Receiver<()>,
    pub(super) grace: Duration,
    pub(super) readers: tokio::task::JoinHandle<()>,
    pub(super) last: Arc<Mutex<Option<ErrorLine>>>,
    pub(super) phase: Arc<Mutex<Phase>>,
    pub(super) id: String,
}

/// Waits for the run to end, stopping it when asked (or when the backend is dropped), then
/// records how it ended.
pub(super) async fn supervise(mut s: Supervised) {
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
                        tracing::warn!(run = %s.id, "run ignored SIGTERM; killing it");
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
    if tokio::time::timeout(OUTPUT_DRAIN, &mut s.readers)
        .await
        .is_err()
    {
        s.readers.abort();
    }
    let (code, line) = match status {
        Ok(st) => (st.code(), lock(&s.last).clone()),
        Err(e) => (
            None,
            Some(ErrorLine {
                code: None,
                reason: format!("could not wait for the worker: {e}"),
            }),
        ),
    };
    tracing::info!(run = %s.id, ?code, reason = ?line.as_ref().map(|l| &l.reason), "local run ended");
    *lock(&s.phase) = Phase::Exited { code, line };
}

/// Reads the worker's output: stderr lines go to the log (at debug) and the last one is kept;
/// the last `{"event":"error",…}` line on stdout is the worker's own account of a failure.
pub(super) async fn read_output(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    id: String,
    last: Arc<Mutex<Option<ErrorLine>>>,
) {
    let last_stderr = Arc::new(Mutex::new(None::<String>));
    let err_task = stderr.map(|stderr| {
        let keep = last_stderr.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr);
            while let Some(line) = next_line(&mut stderr, MAX_LINE).await {
                tracing::debug!(run = %id, "worker: {line}");
                if !line.trim().is_empty() {
                    *lock(&keep) = Some(line);
                }
            }
        })
    });
    let mut error_line = None;
    if let Some(stdout) = stdout {
        let mut stdout = BufReader::new(stdout);
        while let Some(line) = next_line(&mut stdout, MAX_LINE).await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim())
                && v.get("event").and_then(|e| e.as_str()) == Some("error")
            {
                error_line = Some(ErrorLine {
                    code: v.get("code").and_then(|c| c.as_str()).map(str::to_owned),
                    reason: v
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or("no reason given")
                        .to_owned(),
                });
            }
        }
    }
    if let Some(t) = err_task {
        let _ = t.await;
    }
    let fallback = || {
        lock(&last_stderr)
            .take()
            .map(|reason| ErrorLine { code: None, reason })
    };
    *lock(&last) = error_line.or_else(fallback);
}
