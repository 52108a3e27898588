//! Starting "container" processes and stopping them: each in its own process group so a signal
//! reaches everything it started, and every one registered so the fake can kill them all when it
//! is dropped (processes must never outlive a test).

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::config::ImageSpec;

/// How the process's stdout is wired: into the log file, or piped (serverless jobs read their
/// last line).
pub(crate) enum Stdout {
    Log,
    Piped,
}

/// Starts `image.program` with a cleared environment, the image's env, then `extra` (later
/// wins), stdin null and stderr (and stdout unless piped) appended to `log`. The child is not
/// `kill_on_drop`: the fake kills whole groups itself, and a tokio `kill` after the fake reaped
/// the pid could hit a recycled one.
pub(crate) fn spawn(
    image: &ImageSpec,
    extra: &[(String, String)],
    log: &Path,
    stdout: Stdout,
) -> std::io::Result<Child> {
    let program = image
        .program
        .as_ref()
        .ok_or_else(|| std::io::Error::other("image has no program"))?;
    let log_file = File::options().create(true).append(true).open(log)?;
    let mut command = Command::new(program);
    command
        .args(&image.args)
        .env_clear()
        .envs(image.env.iter().map(|(k, v)| (k, v)))
        .envs(extra.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stderr(log_file.try_clone()?)
        .process_group(0);
    match stdout {
        Stdout::Log => command.stdout(log_file),
        Stdout::Piped => command.stdout(Stdio::piped()),
    };
    command.spawn()
}

/// Sends `signal` to the process group `pgid` (= the pid of its leader).
pub(crate) fn signal_group(pgid: i32, signal: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg has no memory-safety preconditions; a stale pgid can at worst signal a
    // recycled group, which the registry keeps unlikely by dropping pids once they exit.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// Waits (blocking, at most `limit`) until `pid` is reaped by us or is no longer our child.
pub(crate) fn reap_blocking(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid pointer to a local int.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc != 0 || Instant::now() >= deadline {
            // rc == pid: reaped; rc == -1: not our child any more (tokio reaped it).
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The exit code, or 128 + signal like a shell reports a signalled process.
pub(crate) fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}
