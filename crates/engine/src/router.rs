//! The router picks the backend of each new run: the first, in the configured order
//! (`LORAFORGE_BACKENDS`), with room, not cooling down after it had no capacity or answered 429, admitted by
//! every [`LaunchGate`] (the trainer's environment, a budget) and by its circuit breaker
//! (`domain::breaker`, stored in the database so replicas agree). A job whose start just failed on
//! a backend goes to the next admitted one (fallback) before that one is tried again. Why it
//! chose a backend is recorded on the run (`route_reason`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use loraforge_db::{BreakerTransition, Repository};
use loraforge_domain::LoraId;
use loraforge_domain::breaker::{Admission, Breaker, BreakerEvent, BreakerRules};

use crate::TickReport;
use crate::backend::TrainingBackend;

/// Asked before a run is launched on a backend; a budget (or the trainer's readiness) says no
/// here. The circuit breaker is the router's own (it needs the database).
pub trait LaunchGate: Send + Sync + std::fmt::Debug + 'static {
    /// `Err(why)` when `backend` must not get a new run now.
    fn admits(&self, backend: &str, now: DateTime<Utc>) -> std::result::Result<(), String>;

    /// Brings the state `admits` answers from up to date (a budget reads the ledger here); the
    /// engine awaits it once per tick, before dispatch. `Err(why)` is reported in the tick and
    /// the gate keeps answering from its previous state.
    fn refresh(
        &self,
        _now: DateTime<Utc>,
    ) -> futures::future::BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// The backend chosen for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub index: usize,
    /// Why, for the run record.
    pub reason: String,
    /// This run is its backend's half-open probe: its accepted launch closes the breaker.
    pub probe: bool,
}

#[derive(Debug)]
pub(crate) struct Router {
    pub(crate) backends: Vec<Arc<dyn TrainingBackend>>,
    pub(crate) gates: Vec<Arc<dyn LaunchGate>>,
    pub(crate) rules: BreakerRules,
    /// Backends that said "no capacity" or "slow down": until when they are left alone, and why.
    cooling: Mutex<HashMap<String, (DateTime<Utc>, &'static str)>>,
    /// The breakers as last read or changed by this engine (refreshed every dispatch).
    breakers: Mutex<HashMap<String, Breaker>>,
    /// The backends a job's start failed on during its current claim, so its next try goes to
    /// another one first. Only an optimisation: a restarted engine starts from the order again.
    failed_on: Mutex<HashMap<LoraId, Vec<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Router {
    pub(crate) fn new(backends: Vec<Arc<dyn TrainingBackend>>, rules: BreakerRules) -> Self {
        Self {
            backends,
            gates: Vec::new(),
            rules,
            cooling: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
            failed_on: Mutex::new(HashMap::new()),
        }
    }

    /// Reads every breaker from the database (other replicas change them too).
    pub(crate) async fn refresh(
        &self,
        repo: &dyn Repository,
        now: DateTime<Utc>,
    ) -> loraforge_db::Result<()> {
        let stored = repo.breakers(&self.rules, now).await?;
        let mut map = lock(&self.breakers);
        map.clear();
        for s in stored {
            map.insert(s.breaker.backend.clone(), s.breaker);
        }
        Ok(())
    }

    /// Refreshes every gate ([`LaunchGate::refresh`]); the failures, for the tick's report.
    pub(crate) async fn refresh_gates(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut errors = Vec::new();
        for g in &self.gates {
            if let Err(e) = g.refresh(now).await {
                errors.push(e);
            }
        }
        errors
    }

    fn breaker(&self, backend: &str) -> Breaker {
        lock(&self.breakers)
            .get(backend)
            .cloned()
            .unwrap_or_else(|| Breaker::closed(backend))
    }

    fn remember(&self, b: Breaker) {
        lock(&self.breakers).insert(b.backend.clone(), b);
    }

    /// Why backend `i` may not get a run now, apart from its breaker; `None` when it may.
    fn blocked(&self, i: usize, room: &[usize], now: DateTime<Utc>) -> Option<String> {
        let b = &self.backends[i];
        if room.get(i).copied().unwrap_or(0) == 0 {
            return Some(format!("full ({} runs at once)", b.max_runs()));
        }
        if let Some((until, why)) = lock(&self.cooling).get(b.name()).filter(|c| c.0 > now) {
            return Some(format!(
                "{why}; asked again from {}",
                until.format("%H:%M:%S UTC")
            ));
        }
        self.gates
            .iter()
            .find_map(|g| g.admits(b.name(), now).err())
    }

    /// The first backend (in order) that runs sample work and could take a run now: room, not
    /// cooling down, every gate admits and its breaker admits outright (a half-open probe is
    /// left to training, whose launch decides it).
    pub(crate) fn choose_for_samples(&self, room: &[usize], now: DateTime<Utc>) -> Option<usize> {
        (0..self.backends.len()).find(|&i| {
            self.backends[i].runs_samples()
                && self.blocked(i, room, now).is_none()
                && matches!(
                    self.breaker(self.backends[i].name())
                        .admission(&self.rules, now),
                    Admission::Admit
                )
        })
    }

    /// Whether some backend could take a run now (a due probe counts): dispatch claims a job
    /// only then.
    pub(crate) fn may_route(&self, room: &[usize], now: DateTime<Utc>) -> bool {
        (0..self.backends.len()).any(|i| {
            self.blocked(i, room, now).is_none()
                && !matches!(
                    self.breaker(self.backends[i].name())
                        .admission(&self.rules, now),
                    Admission::Refuse { .. }
                )
        })
    }

    /// Chooses the backend for job `lora`'s next run, claiming a due half-open probe for
    /// `holder` in the database when it comes to that (one replica gets it). Backends its start
    /// failed on in this claim come last. The breaker changes made go to `report`.
    pub(crate) async fn choose(
        &self,
        repo: &dyn Repository,
        holder: &str,
        lora: LoraId,
        room: &[usize],
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Option<Choice> {
        let failed: Vec<String> = lock(&self.failed_on)
            .get(&lora)
            .cloned()
            .unwrap_or_default();
        let mut skipped: Vec<String> = Vec::new();
        // First the backends this job has not failed on, then (only) those it has.
        for retry_pass in [false, true] {
            for (i, b) in self.backends.iter().enumerate() {
                let name = b.name();
                let failed_here = failed.iter().any(|f| f == name);
                if failed_here && !retry_pass {
                    skipped.push(format!("{name}: its start of this job failed"));
                    continue;
                }
                if !failed_here && retry_pass {
                    continue;
                }
                if let Some(why) = self.blocked(i, room, now) {
                    if !retry_pass {
                        skipped.push(format!("{name}: {why}"));
                    }
                    continue;
                }
                let probe = match self.breaker(name).admission(&self.rules, now) {
                    Admission::Admit => false,
                    Admission::Refuse { why, .. } => {
                        if !retry_pass {
                            skipped.push(format!("{name}: {why}"));
                        }
                        continue;
                    }
                    Admission::ProbeDue => {
                        let event = BreakerEvent::ClaimProbe {
                            holder: holder.to_owned(),
                        };
                        match repo.step_breaker(name, &event, &self.rules, now).await {
                            Ok(step) => {
                                let won = step.changed;
                                report.breaker_transitions.extend(step.transition);
                                self.remember(step.breaker);
                                if !won {
                                    if !retry_pass {
                                        skipped.push(format!(
                                            "{name}: its circuit breaker's probe is another engine's"
                                        ));
                                    }
                                    continue;
                                }
                                true
                            }
                            Err(e) => {
                                report
                                    .errors
                                    .push(format!("claiming the probe of {name}: {e}"));
                                continue;
                            }
                        }
                    }
                };
                let mut reason = if probe {
                    format!("{name}: the probe of its half-open circuit breaker")
                } else if skipped.is_empty() && i == 0 {
                    format!("{name}: first in order")
                } else {
                    name.to_owned()
                };
                if !skipped.is_empty() {
                    let after = if failed_here {
                        "every other backend is unavailable"
                    } else {
                        "fallback"
                    };
                    reason = format!("{reason}; {after} after {}", skipped.join("; "));
                }
                return Some(Choice {
                    index: i,
                    reason,
                    probe,
                });
            }
        }
        None
    }

    /// Why no backend may get a run now, when every one is refused by a gate or an open breaker
    /// (each backend's first refusal). `None` while any backend is admitted (cooling down or full
    /// is waiting, not refusal).
    pub(crate) fn refusals(&self, now: DateTime<Utc>) -> Option<String> {
        let reasons: Vec<String> =
            self.backends
                .iter()
                .map(|b| {
                    let gated = self
                        .gates
                        .iter()
                        .find_map(|g| g.admits(b.name(), now).err());
                    let why = gated.or_else(|| {
                        match self.breaker(b.name()).admission(&self.rules, now) {
                            Admission::Refuse { why, .. } => Some(why),
                            _ => None,
                        }
                    });
                    why.map(|why| format!("{}: {why}", b.name()))
                })
                .collect::<Option<Vec<_>>>()?;
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Why queued jobs wait, for their status message: when no backend may take a run now and
    /// at least one refuses (a gate, an open breaker), each backend's reason — refused, full
    /// (`room`) or cooling down after it had no capacity. `None` while some backend could take a
    /// run, and while every one is merely full or cooling down (the queue then moves as runs
    /// end; `queued` says it).
    pub(crate) fn wait_reason(&self, room: &[usize], now: DateTime<Utc>) -> Option<String> {
        let mut refused = false;
        let reasons: Vec<String> = (0..self.backends.len())
            .map(|i| {
                let name = self.backends[i].name();
                let gated = self.gates.iter().find_map(|g| g.admits(name, now).err());
                let why = gated.or_else(|| match self.breaker(name).admission(&self.rules, now) {
                    Admission::Refuse { why, .. } => Some(why),
                    _ => None,
                });
                if let Some(why) = why {
                    refused = true;
                    return Some(format!("{name}: {why}"));
                }
                self.blocked(i, room, now)
                    .map(|why| format!("{name}: {why}"))
            })
            .collect::<Option<Vec<_>>>()?;
        (refused && !reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// `backend` had no capacity: it is left alone until `until`.
    pub(crate) fn cool_down(&self, backend: &str, until: DateTime<Utc>) {
        self.cool_down_because(backend, until, "no capacity");
    }

    /// `backend` is left alone until `until`, because of `why` (said in route reasons and
    /// waiting messages).
    pub(crate) fn cool_down_because(&self, backend: &str, until: DateTime<Utc>, why: &'static str) {
        lock(&self.cooling).insert(backend.to_owned(), (until, why));
    }

    /// Job `lora`'s start failed on `backend`: its next try goes elsewhere first.
    pub(crate) fn failed_on(&self, lora: LoraId, backend: &str) {
        let mut map = lock(&self.failed_on);
        let list = map.entry(lora).or_default();
        if !list.iter().any(|b| b == backend) {
            list.push(backend.to_owned());
        }
    }

    /// Job `lora` started (or left this engine): forget where its start failed.
    pub(crate) fn forget(&self, lora: LoraId) {
        lock(&self.failed_on).remove(&lora);
    }

    /// Whether another backend than those job `lora` failed on could take it now (its retry then
    /// goes there at once instead of waiting).
    pub(crate) fn has_fallback(&self, lora: LoraId, room: &[usize], now: DateTime<Utc>) -> bool {
        let failed: Vec<String> = lock(&self.failed_on)
            .get(&lora)
            .cloned()
            .unwrap_or_default();
        (0..self.backends.len()).any(|i| {
            let name = self.backends[i].name();
            !failed.iter().any(|f| f == name)
                && self.blocked(i, room, now).is_none()
                && !matches!(
                    self.breaker(name).admission(&self.rules, now),
                    Admission::Refuse { .. }
                )
        })
    }

    /// Applies a breaker event for `backend` and keeps what it did.
    pub(crate) async fn record(
        &self,
        repo: &dyn Repository,
        backend: &str,
        event: BreakerEvent,
        now: DateTime<Utc>,
        transitions: &mut Vec<BreakerTransition>,
    ) -> loraforge_db::Result<()> {
        let step = repo.step_breaker(backend, &event, &self.rules, now).await?;
        if let Some(t) = &step.transition {
            tracing::warn!(backend, from = %t.from, to = %t.to, reason = %t.reason, "circuit breaker");
        }
        transitions.extend(step.transition);
        self.remember(step.breaker);
        Ok(())
    }
}
