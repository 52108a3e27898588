//! How an attempt ends early ([`Halt`]: a stop request, a 409, a refusal) and how any attempt
//! ends ([`Exit`]: the exit code and the error line for stdout), including what the control
//! plane's refusals of the job or of the result mean for it.

use std::future::Future;

use tokio::sync::watch;

use crate::WorkerConfig;
use crate::api::{self, Failed};
use crate::exit;
use crate::layout::Layout;

/// Why an attempt stops before its end, raised by a signal or by the relay.
#[derive(Debug, Clone)]
pub(crate) enum Halt {
    /// SIGTERM, SIGINT or an injected stop request.
    Stop(&'static str),
    /// 409 `job_not_active`, with the control plane's message.
    NotActive(String),
    /// 401/403/404 to a progress report (status and message).
    Refused(String),
    /// No answer from the control plane for this long (it is down and has not come back).
    Unreachable(std::time::Duration),
}

/// Records `h` unless the attempt is already halting.
pub(crate) fn raise(halt: &watch::Sender<Option<Halt>>, h: Halt) {
    halt.send_if_modified(|cur| {
        if cur.is_none() {
            *cur = Some(h);
            true
        } else {
            false
        }
    });
}

/// How an attempt ends: the exit code and, unless 0, the error line for stdout.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: i32,
    pub(crate) line: Option<String>,
}

impl Exit {
    pub(crate) fn ok() -> Self {
        Exit {
            code: exit::OK,
            line: None,
        }
    }

    /// The worker's own error line, in the trainer's shape; the exit status is the outcome
    /// table's for `name` (`loraforge_domain::outcome`).
    pub(crate) fn error(name: &str, reason: impl Into<String>) -> Self {
        let code = loraforge_domain::outcome::exit_code(name);
        #[derive(serde::Serialize)]
        struct Line<'a> {
            event: &'a str,
            code: &'a str,
            reason: String,
            exit_code: i32,
        }
        let line = Line {
            event: "error",
            code: name,
            reason: reason.into(),
            exit_code: code,
        };
        Exit {
            code,
            line: Some(serde_json::to_string(&line).expect("strings serialize")),
        }
    }

    /// The trainer's own error line, passed on as it is.
    pub(crate) fn verbatim(code: i32, line: String) -> Self {
        Exit {
            code,
            line: Some(line),
        }
    }

    /// What the control plane is told about this end (`POST …/failure`): the error line's
    /// code, reason and `retryable`. `None` for a success and for ends there is nobody to tell
    /// (the job is no longer active; the token was refused).
    pub(crate) fn failure_report(&self) -> Option<(String, Option<String>, bool)> {
        let line: serde_json::Value = serde_json::from_str(self.line.as_deref()?).ok()?;
        let code = line.get("code")?.as_str()?.to_owned();
        if matches!(
            code.as_str(),
            "job_not_active" | "job_refused" | "no_token" | "bad_server_url"
        ) {
            return None;
        }
        let reason = line
            .get("reason")
            .and_then(|r| r.as_str())
            .map(str::to_owned);
        let retryable = line
            .get("retryable")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        Some((code, reason, retryable))
    }

    pub(crate) fn halted(h: Halt, during: &str) -> Self {
        match h {
            Halt::Stop(what) => Exit::error(
                "stopped",
                format!(
                    "the worker received {what} {during} and stopped; the job folder is kept and a later attempt \
                     continues from it"
                ),
            ),
            Halt::NotActive(message) => Exit::error(
                "job_not_active",
                format!(
                    "the control plane says the job is no longer active ({message}); the worker stopped {during} \
                     and kept the job folder"
                ),
            ),
            Halt::Unreachable(limit) => Exit::error(
                "stopped",
                format!(
                    "the control plane did not answer for {}s, so the worker stopped {during}; the job folder \
                     is kept and a later attempt continues from it",
                    limit.as_secs()
                ),
            ),
            Halt::Refused(message) => Exit::error(
                "job_refused",
                format!(
                    "the control plane refused this worker's progress report (HTTP {message}), so the worker stopped \
                     {during}; the engine starts a new attempt with a fresh token"
                ),
            ),
        }
    }
}

/// `fut`, unless the attempt halts first.
pub(crate) async fn or_halt<T>(
    halt: &mut watch::Receiver<Option<Halt>>,
    fut: impl Future<Output = T>,
) -> Result<T, Halt> {
    let mut fut = std::pin::pin!(fut);
    // The watch's guard is dropped inside the branch: it must not live across an await.
    let halted = async {
        halt.wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|h| (*h).clone())
    };
    tokio::select! {
        biased;
        h = halted => match h {
            Some(h) => Err(h),
            // The sender is gone: nothing can halt any more.
            None => Ok(fut.await),
        },
        v = &mut fut => Ok(v),
    }
}

/// The exit for a job that could not be fetched.
pub(crate) fn job_failure(failed: Failed, cfg: &WorkerConfig, server: &str) -> Exit {
    use reqwest::StatusCode;
    let Failed { error, tries } = failed;
    let id = &cfg.lora_id;
    match error.status() {
        Some(StatusCode::CONFLICT) => Exit::error(
            "job_not_active",
            format!(
                "the control plane says job {id} is no longer active ({}); there is nothing to do",
                error.message()
            ),
        ),
        Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Exit::error(
            "job_refused",
            format!(
                "the control plane refused the worker token for job {id} ({error}); the token may have expired or \
                 be for another job — the engine issues a fresh one with the next attempt"
            ),
        ),
        Some(StatusCode::NOT_FOUND) => Exit::error(
            "job_refused",
            format!(
                "the control plane at {server} does not know job {id} ({error}); check --lora and --server"
            ),
        ),
        _ if error.is_retryable() => Exit::error(
            "control_plane_unreachable",
            format!(
                "could not fetch job {id} from the control plane at {server}: {error} ({tries} tries); check --server \
                 and that the control plane is running and reachable from this host"
            ),
        ),
        Some(_) => Exit::error(
            "job_refused",
            format!("the control plane at {server} refused job {id}: {error}"),
        ),
        None => Exit::error(
            "job_unreadable",
            format!(
                "the control plane's answer for job {id} could not be used ({error}); check that the worker and the \
                 control plane are the same version"
            ),
        ),
    }
}

/// The exit for a result the control plane did not take.
pub(crate) fn result_failure(failed: Failed, layout: &Layout) -> Exit {
    use reqwest::StatusCode;
    let Failed { error, tries } = failed;
    match &error {
        api::CallError::Status {
            status: StatusCode::CONFLICT,
            ..
        } => Exit::error(
            "job_not_active",
            format!(
                "the control plane says the job is no longer active ({}); the result was not recorded",
                error.message()
            ),
        ),
        api::CallError::Status {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message,
        } => Exit::error(
            code.as_deref().unwrap_or("result_rejected"),
            message
                .clone()
                .unwrap_or_else(|| format!("the control plane rejected the result ({error})")),
        ),
        _ => Exit::error(
            "result_failed",
            format!(
                "reporting the result failed: {error} ({tries} tries); the trained files are kept in {} and the next \
                 attempt uploads and reports them again",
                layout.out.display()
            ),
        ),
    }
}
