//! The engine's knobs, with their units and defaults.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// This engine's name in leases (`training_jobs.worker`). Stable across restarts of the same
    /// host, so a restarted engine recognises the runs it started; unique per replica.
    pub worker_id: String,
    /// Time between ticks in [`crate::Engine::run`]. Cancellations take effect within one of
    /// these plus the backend's kill grace period. Default 1 s.
    pub poll_interval: Duration,
    /// How far a claim or a heartbeat extends a job's lease. A job whose lease ends is
    /// requeued by the reaper (on any replica). Default 5 min.
    pub lease: Duration,
    /// A run in `training` longer than this is killed and failed. Default 2 h.
    pub job_timeout: Duration,
    /// Runs of one job that may fail through their own fault (a crash of the worker, a lost
    /// instance, a failed upload) before the job fails. Runs the control plane itself stopped
    /// (a restart, a shutdown) do not count. Default 3.
    pub max_attempts: u32,
    /// Runs of one job in all, counted or not, before it fails: a bound on endless restarts.
    /// Default 10.
    pub max_runs: u32,
    /// A user's jobs in training or validating at once (the claim enforces it). Default 2.
    pub max_active_per_user: u32,
    /// Pauses before retrying a start that failed with a retryable error; one retry per entry,
    /// then the job fails. Default 2 s, 4 s, 8 s.
    pub start_retry_delays: Vec<Duration>,
    /// Pending LoRAs admitted to the queue per tick. Default 500.
    pub admit_batch: u32,
    /// The control plane's base URL as workers reach it (`LORAFORGE_SERVER` of every run).
    pub server_url: String,
    /// The prefix of every instance name (`{prefix}{lora}-{attempt}`), so instances of this
    /// service can be told from others at a provider. Default `loraforge-`.
    pub instance_prefix: String,
    /// Longest wait for one call to a backend; a slow provider never stalls a tick. Default 30 s.
    pub call_timeout: Duration,
    /// Backend calls and per-run steps in flight at once within a tick. Default 16.
    pub concurrency: usize,
    /// Pauses between tries to end an instance that would not end; after the last the operator
    /// is alerted (and tries go on at the last pause). Default 2 s, 4 s, 8 s.
    pub terminate_retry_delays: Vec<Duration>,
    /// Time between two orphan sweeps (the first runs at start). Default 1 h.
    pub sweep_interval: Duration,
    /// How long the after-training steps may keep failing to read the stored files before the
    /// job fails. Default 30 min.
    pub after_training_give_up: Duration,
    /// The circuit breaker of every backend (`domain::breaker`): 3 provider-side failures within
    /// 10 min open it, a probe is let through after 30 min, an abandoned probe is given to
    /// another replica after 5 min.
    pub breaker: loraforge_domain::breaker::BreakerRules,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            worker_id: "engine-local".to_owned(),
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(5 * 60),
            job_timeout: Duration::from_secs(2 * 60 * 60),
            max_attempts: 3,
            max_runs: 10,
            max_active_per_user: 2,
            start_retry_delays: vec![
                Duration::from_secs(2),
                Duration::from_secs(4),
                Duration::from_secs(8),
            ],
            admit_batch: 500,
            server_url: "http://127.0.0.1:8080".to_owned(),
            instance_prefix: "loraforge-".to_owned(),
            call_timeout: Duration::from_secs(30),
            concurrency: 16,
            terminate_retry_delays: vec![
                Duration::from_secs(2),
                Duration::from_secs(4),
                Duration::from_secs(8),
            ],
            after_training_give_up: Duration::from_secs(30 * 60),
            sweep_interval: Duration::from_secs(3600),
            breaker: loraforge_domain::breaker::BreakerRules::default(),
        }
    }
}

/// A duration for people: "2 h", "90 min", "45 s".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// `d` as a chrono duration, saturating.
pub(crate) fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(7200)), "2 h");
        assert_eq!(human_duration(Duration::from_secs(5400)), "90 min");
        assert_eq!(human_duration(Duration::from_secs(45)), "45 s");
        assert_eq!(human_duration(Duration::from_secs(61)), "61 s");
    }
}
