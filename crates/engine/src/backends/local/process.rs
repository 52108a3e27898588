//! The local backend's view of its processes: a run's name (`local:<pid>:<start time>`), whether
//! that process or anything of its group still lives (`/proc`), and signals to a whole group.

/// `local:<pid>:<start time>`.
pub(super) fn provider_id(pid: u32, start: u64) -> String {
    format!("local:{pid}:{start}")
}

pub(super) fn parse_provider_id(id: &str) -> Option<(u32, u64)> {
    let mut parts = id.strip_prefix("local:")?.splitn(2, ':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The start time of process `pid` (clock ticks since boot, field 22 of `/proc/<pid>/stat`).
pub(super) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Process `pid` is alive and is the one that started at `start` (not a zombie).
pub(super) fn still_running(pid: u32, start: u64) -> bool {
    if process_start(pid) != Some(start) {
        return false;
    }
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let state = state
        .as_deref()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().chars().next()));
    !matches!(state.flatten(), Some('Z' | 'X') | None)
}

/// A live (not zombie) process is in process group `pgid`: a run's trainer may outlive its
/// worker, the group's first process.
pub(super) fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        // Fields after the command: state, ppid, pgrp.
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<u32>().ok());
        pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
    })
}

/// A run of an earlier engine: its worker still runs, or something of its group does.
pub(super) fn foreign_alive(pid: u32, start: u64) -> bool {
    still_running(pid, start) || group_alive(pid)
}

/// Sends `signal` to process group `pgid`; a group that is already gone is fine.
pub(super) fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg has no memory-safety preconditions; a stale or foreign pgid can only make
    // it fail (ESRCH/EPERM), which is ignored: the group is then gone or not ours.
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc != 0 {
        tracing::debug!(pgid, signal, error = %std::io::Error::last_os_error(), "killpg");
    }
}

/// Kills a run's whole group when dropped unless disarmed: covers the supervisor task being
/// dropped (runtime shutdown) before it could clean up.
pub(super) struct GroupGuard(pub(super) Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            signal_group(pgid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_name_a_process_and_its_start() {
        assert_eq!(parse_provider_id(&provider_id(42, 7)), Some((42, 7)));
        assert_eq!(parse_provider_id("local-abc"), None);
        let me = std::process::id();
        let start = process_start(me).expect("this process has a start time");
        assert!(still_running(me, start));
        assert!(
            !still_running(me, start + 1),
            "another process with a reused pid"
        );
    }
}
