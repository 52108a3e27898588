//! What `serve` knows about its own ability to train, for the job engine and `/readyz`: the local
//! backend needs the trainer's Python environment on this host ([`TrainerGate`]), and the
//! engine's loop must be alive and ticking ([`EngineReport`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use loraforge_domain::Clock;
use loraforge_engine::{Engine, EngineHealth, LaunchGate};
use loraforge_server::state::{EngineNudge, EngineProbe, EngineStatus};

use crate::trainer_env::find_interpreter;

/// How long a look at the trainer's environment is trusted: setting it up (`loraforge
/// setup-trainer`) while `serve` runs is noticed within this time, without a restart.
const RECHECK_EVERY: chrono::Duration = chrono::Duration::seconds(10);

/// Refuses the `local` backend while the trainer's interpreter is missing, so LoRAs wait queued
/// (saying why) instead of failing on a host that cannot train.
#[derive(Debug)]
pub struct TrainerGate {
    trainer_python: Option<PathBuf>,
    venv: PathBuf,
    checked: Mutex<Option<Checked>>,
}

/// When the environment was last looked at, and what was found.
type Checked = (DateTime<Utc>, Result<(), String>);

impl TrainerGate {
    pub fn new(trainer_python: Option<PathBuf>, venv: PathBuf) -> Self {
        Self {
            trainer_python,
            venv,
            checked: Mutex::new(None),
        }
    }

    /// `Err(why)` while this host cannot run the trainer.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), String> {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, result)) = checked.as_ref()
            && now >= *at
            && now < *at + RECHECK_EVERY
        {
            return result.clone();
        }
        let result = find_interpreter(self.trainer_python.as_deref(), &self.venv)
            .map(|_| ())
            .map_err(|e| e.to_string());
        *checked = Some((now, result.clone()));
        result
    }
}

impl LaunchGate for TrainerGate {
    fn admits(&self, backend: &str, now: DateTime<Utc>) -> Result<(), String> {
        if backend == "local" {
            self.check(now)
        } else {
            Ok(())
        }
    }
}

/// The engine as `/readyz` reports it: its health record, and why it cannot train when no
/// configured backend can.
#[derive(Debug)]
pub struct EngineReport {
    pub health: Arc<EngineHealth>,
    pub gate: Arc<TrainerGate>,
    /// The configured backends, in order.
    pub backends: Vec<String>,
    /// A tick older than this means the loop is stuck: several poll intervals, at least 60 s
    /// (a tick waits for backends' calls, each bounded by the engine's call timeout).
    pub stale_after: Duration,
    pub clock: Arc<dyn Clock>,
}

impl EngineProbe for EngineReport {
    fn status(&self) -> EngineStatus {
        let now = self.clock.now();
        let h = self.health.report();
        let refusals: Option<Vec<String>> = self
            .backends
            .iter()
            .map(|b| {
                self.gate
                    .admits(b, now)
                    .err()
                    .map(|why| format!("{b}: {why}"))
            })
            .collect();
        EngineStatus {
            running: h.running,
            last_tick_age_secs: h.last_tick.map(|t| (now - t).num_seconds().max(0)),
            stale_after_secs: i64::try_from(self.stale_after.as_secs()).unwrap_or(i64::MAX),
            restarts: h.restarts,
            cannot_train: refusals.filter(|r| !r.is_empty()).map(|r| r.join("; ")),
        }
    }
}

/// Provider webhooks reach the engine through this: the named backend's runs are observed at
/// the next tick (`Engine::nudge`), which the server's wake-up then starts.
#[derive(Debug)]
pub struct EngineNudger(pub Arc<Engine>);

impl EngineNudge for EngineNudger {
    fn observe_soon(&self, backend: &str) {
        self.0.nudge(backend);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_gate_refuses_local_until_the_interpreter_exists_and_notices_it_appear() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        let gate = TrainerGate::new(None, venv.clone());
        let why = gate.admits("local", t(0)).unwrap_err();
        assert!(why.contains("setup-trainer"), "{why}");
        assert!(
            gate.admits("runpod", t(0)).is_ok(),
            "remote backends bring their own"
        );

        let python = crate::trainer_env::venv_python(&venv);
        std::fs::create_dir_all(python.parent().unwrap()).unwrap();
        std::fs::write(&python, "").unwrap();
        assert!(gate.admits("local", t(1)).is_err(), "trusted for a while");
        assert!(gate.admits("local", t(10)).is_ok(), "then looked at again");
    }
}
