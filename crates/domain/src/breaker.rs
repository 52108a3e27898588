//! The circuit breaker of one training backend (PRD 4, "Circuit Breaker Pattern"): provider-side
//! failures within a window open it; an open breaker keeps new runs off the backend; once it has
//! been open long enough one probe run is let through (half-open), whose accepted launch closes
//! it and whose failure opens it again. An operator may force it open or closed.
//!
//! This module is the one place that decides; the repository stores the state, counts the
//! failures in the window and applies [`step`] inside one transaction, so replicas sharing a
//! database agree (one of them gets the probe). Only failures that are the provider's count:
//! launch errors that may pass (5xx, timeouts, no capacity) and run outcomes the outcome table
//! marks `provider_fault` (`crate::outcome`); never a user's bad input or a diverged job.
//!
//! A probe succeeds when its launch is accepted (the minimum PRD 4 asks: the provider takes runs
//! again). A probe run that later fails through the provider's fault is an ordinary failure of a
//! closed breaker and counts toward opening it again.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Runs go to the backend.
    Closed,
    /// The backend is skipped until the next probe is due.
    Open,
    /// One probe run is in flight; others still skip the backend.
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    pub fn parse(s: &str) -> Option<BreakerState> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The breaker's numbers (settings `LORAFORGE_BREAKER_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerRules {
    /// Provider-side failures within `window` that open a closed breaker. Default 3.
    pub failures_to_open: u32,
    /// Default 10 min.
    pub window: Duration,
    /// How long an open breaker waits before one probe is let through. Default 30 min.
    pub open_for: Duration,
    /// A probe whose holder has neither launched nor failed within this is given to the next
    /// replica that asks (its holder died). Default 5 min.
    pub probe_timeout: Duration,
}

impl Default for BreakerRules {
    fn default() -> Self {
        Self {
            failures_to_open: 3,
            window: Duration::minutes(10),
            open_for: Duration::minutes(30),
            probe_timeout: Duration::minutes(5),
        }
    }
}

/// One backend's breaker as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    pub backend: String,
    pub state: BreakerState,
    /// When it last opened (the next probe is due `open_for` later).
    pub opened_at: Option<DateTime<Utc>>,
    /// The engine holding the half-open probe, and since when.
    pub probe_holder: Option<String>,
    pub probe_started_at: Option<DateTime<Utc>>,
    /// Failures before this (the last close) no longer count toward opening.
    pub counted_from: Option<DateTime<Utc>>,
}

impl Breaker {
    /// A backend never seen failing.
    pub fn closed(backend: &str) -> Self {
        Self {
            backend: backend.to_owned(),
            state: BreakerState::Closed,
            opened_at: None,
            probe_holder: None,
            probe_started_at: None,
            counted_from: None,
        }
    }

    /// When an open breaker lets its next probe through.
    pub fn next_probe_at(&self, rules: &BreakerRules) -> Option<DateTime<Utc>> {
        match self.state {
            BreakerState::Closed => None,
            BreakerState::Open => self.opened_at.map(|at| at + rules.open_for),
            BreakerState::HalfOpen => self.probe_started_at.map(|at| at + rules.probe_timeout),
        }
    }

    /// Whether a new run may go to the backend now.
    pub fn admission(&self, rules: &BreakerRules, now: DateTime<Utc>) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Admit,
            BreakerState::Open | BreakerState::HalfOpen => match self.next_probe_at(rules) {
                Some(at) if at <= now => Admission::ProbeDue,
                // An open breaker without a time (corrupt or legacy) probes at once.
                None => Admission::ProbeDue,
                Some(at) => Admission::Refuse {
                    next_probe_at: at,
                    why: if self.state == BreakerState::Open {
                        format!(
                            "circuit breaker open; next probe at {}",
                            at.format("%H:%M:%S UTC")
                        )
                    } else {
                        format!(
                            "circuit breaker half-open, its probe in flight (given up at {})",
                            at.format("%H:%M:%S UTC")
                        )
                    },
                },
            },
        }
    }
}

/// What [`Breaker::admission`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// A probe may go: whoever claims it first (`BreakerEvent::ClaimProbe`).
    ProbeDue,
    Refuse {
        next_probe_at: DateTime<Utc>,
        why: String,
    },
}

/// What happened to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerEvent {
    /// A provider-side failure. `key` names it uniquely (a launch try, a run), so two replicas
    /// reporting the same failure count it once.
    Failure { key: String, reason: String },
    /// `holder` asks for the half-open probe.
    ClaimProbe { holder: String },
    /// `holder` launched a run on the backend; closes the breaker if it held the probe.
    Launched { holder: String },
    /// An operator forces the state (`Open` or `Closed`).
    Force {
        to: BreakerState,
        reason: String,
        by: String,
    },
}

/// One change of state, recorded in `breaker_transitions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: String,
    /// The admin who forced it; `None` when the breaker decided.
    pub forced_by: Option<String>,
}

/// What an event does to breaker `b`: the new breaker and the transition, if any; `None` when
/// nothing changes (a refused probe claim, a failure of an open breaker, …).
/// `failures_in_window`: provider-side failures counted for the backend within the window since
/// `counted_from`, this one included (only read for failures).
pub fn step(
    b: &Breaker,
    event: &BreakerEvent,
    failures_in_window: u32,
    rules: &BreakerRules,
    now: DateTime<Utc>,
) -> Option<(Breaker, Option<Transition>)> {
    use BreakerState::{Closed, HalfOpen, Open};
    let to = |state: BreakerState, reason: String, forced_by: Option<String>| {
        let mut next = b.clone();
        next.state = state;
        next.probe_holder = None;
        next.probe_started_at = None;
        match state {
            Open => next.opened_at = Some(now),
            Closed => next.counted_from = Some(now),
            HalfOpen => {}
        }
        Some((
            next,
            Some(Transition {
                from: b.state,
                to: state,
                reason,
                forced_by,
            }),
        ))
    };
    match (b.state, event) {
        (Closed, BreakerEvent::Failure { reason, .. })
            if failures_in_window >= rules.failures_to_open.max(1) =>
        {
            to(
                Open,
                format!(
                    "{failures_in_window} provider-side failures within {} min; last: {reason}",
                    rules.window.num_minutes()
                ),
                None,
            )
        }
        (HalfOpen, BreakerEvent::Failure { reason, .. }) => {
            to(Open, format!("failed while half-open: {reason}"), None)
        }
        (Closed | Open, BreakerEvent::Failure { .. }) => None,
        (Open | HalfOpen, BreakerEvent::ClaimProbe { holder }) => {
            if b.admission(rules, now) != Admission::ProbeDue {
                return None;
            }
            let mut next = b.clone();
            next.state = HalfOpen;
            next.probe_holder = Some(holder.clone());
            next.probe_started_at = Some(now);
            let transition = (b.state == Open).then(|| Transition {
                from: Open,
                to: HalfOpen,
                reason: format!(
                    "open for {} min: one probe let through ({holder})",
                    rules.open_for.num_minutes()
                ),
                forced_by: None,
            });
            Some((next, transition))
        }
        (Closed, BreakerEvent::ClaimProbe { .. }) => None,
        (HalfOpen, BreakerEvent::Launched { holder })
            if b.probe_holder.as_deref() == Some(holder.as_str()) =>
        {
            to(Closed, "the probe's launch was accepted".to_owned(), None)
        }
        (_, BreakerEvent::Launched { .. }) => None,
        (
            from,
            BreakerEvent::Force {
                to: target,
                reason,
                by,
            },
        ) => {
            if from == *target || *target == HalfOpen {
                return None;
            }
            to(*target, format!("forced: {reason}"), Some(by.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn failure() -> BreakerEvent {
        BreakerEvent::Failure {
            key: "k".into(),
            reason: "503".into(),
        }
    }

    fn claim(h: &str) -> BreakerEvent {
        BreakerEvent::ClaimProbe { holder: h.into() }
    }

    fn launched(h: &str) -> BreakerEvent {
        BreakerEvent::Launched { holder: h.into() }
    }

    #[test]
    fn states_round_trip_their_names() {
        for s in BreakerState::ALL {
            assert_eq!(BreakerState::parse(s.as_str()), Some(s));
        }
        assert_eq!(BreakerState::parse("ajar"), None);
    }

    #[test]
    fn the_whole_cycle() {
        let rules = BreakerRules::default();
        let now = t0();
        let b = Breaker::closed("runpod");
        assert_eq!(b.admission(&rules, now), Admission::Admit);
        // Two failures in the window change nothing; the third opens it.
        assert_eq!(step(&b, &failure(), 1, &rules, now), None);
        assert_eq!(step(&b, &failure(), 2, &rules, now), None);
        let (open, t) = step(&b, &failure(), 3, &rules, now).expect("opens");
        let t = t.expect("a transition");
        assert_eq!(
            (t.from, t.to, t.forced_by),
            (BreakerState::Closed, BreakerState::Open, None)
        );
        assert!(
            t.reason
                .contains("3 provider-side failures within 10 min; last: 503")
        );
        assert_eq!(open.opened_at, Some(now));
        // Open: refused until 30 min have passed, and no probe before.
        let almost = now + Duration::minutes(30) - Duration::seconds(1);
        assert!(
            matches!(open.admission(&rules, almost), Admission::Refuse { next_probe_at, .. } if next_probe_at == now + Duration::minutes(30))
        );
        assert_eq!(step(&open, &claim("a"), 0, &rules, almost), None);
        assert_eq!(
            step(&open, &failure(), 9, &rules, almost),
            None,
            "open: failures change nothing"
        );
        // 30 min: one probe, to the first who asks.
        let due = now + Duration::minutes(30);
        assert_eq!(open.admission(&rules, due), Admission::ProbeDue);
        let (half, t) = step(&open, &claim("a"), 0, &rules, due).expect("probe");
        assert_eq!(
            t.map(|t| (t.from, t.to)),
            Some((BreakerState::Open, BreakerState::HalfOpen))
        );
        assert_eq!(half.probe_holder.as_deref(), Some("a"));
        assert_eq!(
            step(&half, &claim("b"), 0, &rules, due),
            None,
            "one probe only"
        );
        assert!(matches!(
            half.admission(&rules, due),
            Admission::Refuse { .. }
        ));
        // Somebody else's launch (a run admitted before) does not close it; the probe's does.
        assert_eq!(step(&half, &launched("b"), 0, &rules, due), None);
        let (closed, t) = step(&half, &launched("a"), 0, &rules, due).expect("closes");
        assert_eq!(
            t.map(|t| (t.from, t.to)),
            Some((BreakerState::HalfOpen, BreakerState::Closed))
        );
        assert_eq!(closed.counted_from, Some(due));
        assert_eq!(closed.probe_holder, None);
        // A failing probe opens it again, for another 30 min.
        let later = due + Duration::minutes(1);
        let (reopened, t) = step(&half, &failure(), 1, &rules, later).expect("reopens");
        assert_eq!(
            t.map(|t| (t.from, t.to)),
            Some((BreakerState::HalfOpen, BreakerState::Open))
        );
        assert_eq!(
            reopened.next_probe_at(&rules),
            Some(later + Duration::minutes(30))
        );
    }

    #[test]
    fn an_abandoned_probe_goes_to_the_next_replica() {
        let rules = BreakerRules::default();
        let now = t0();
        let mut b = Breaker::closed("runpod");
        b.state = BreakerState::HalfOpen;
        b.opened_at = Some(now - Duration::minutes(30));
        b.probe_holder = Some("dead".into());
        b.probe_started_at = Some(now);
        assert_eq!(
            step(&b, &claim("b"), 0, &rules, now + Duration::minutes(4)),
            None
        );
        let (next, t) =
            step(&b, &claim("b"), 0, &rules, now + Duration::minutes(5)).expect("taken over");
        assert_eq!(t, None, "still half-open: no transition");
        assert_eq!(next.probe_holder.as_deref(), Some("b"));
    }

    #[test]
    fn operators_force_open_or_closed() {
        let rules = BreakerRules::default();
        let now = t0();
        let b = Breaker::closed("runpod");
        let force = |to| BreakerEvent::Force {
            to,
            reason: "maintenance".into(),
            by: "admin-1".into(),
        };
        assert_eq!(
            step(&b, &force(BreakerState::Closed), 0, &rules, now),
            None,
            "already closed"
        );
        assert_eq!(
            step(&b, &force(BreakerState::HalfOpen), 0, &rules, now),
            None
        );
        let (open, t) = step(&b, &force(BreakerState::Open), 0, &rules, now).expect("forced");
        let t = t.expect("transition");
        assert_eq!(t.forced_by.as_deref(), Some("admin-1"));
        assert_eq!(t.reason, "forced: maintenance");
        assert_eq!(open.state, BreakerState::Open);
        let (closed, _) =
            step(&open, &force(BreakerState::Closed), 0, &rules, now).expect("forced");
        assert_eq!(closed.state, BreakerState::Closed);
        assert_eq!(
            closed.counted_from,
            Some(now),
            "old failures no longer count"
        );
    }
}
