//! The training status machine. [`transition`] is the only way a status changes; the database
//! layer applies its result with a compare-and-set on the previous status.
//!
//! ```text
//! pending ──enqueue──▶ queued ──start──▶ training ──begin_validation──▶ validating ──complete──▶ completed
//!                        ▲                  │
//!                        └─────requeue──────┘        fail / cancel: from any non-final state
//! ```
//!
//! `pending`: accepted, not yet placed in the queue. `queued`: waiting for a training slot (the
//! user's concurrency limit and a backend). `training` and `validating`: running. `completed`,
//! `failed` and `cancelled` are final.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingStatus {
    Pending,
    Queued,
    Training,
    Validating,
    Completed,
    Failed,
    Cancelled,
}

impl TrainingStatus {
    pub const ALL: [TrainingStatus; 7] = [
        Self::Pending,
        Self::Queued,
        Self::Training,
        Self::Validating,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Statuses that count toward a user's monthly limit (PRD 2: failed and cancelled don't).
    pub const COUNTED: [TrainingStatus; 5] = [
        Self::Pending,
        Self::Queued,
        Self::Training,
        Self::Validating,
        Self::Completed,
    ];

    /// Statuses that occupy one of the user's concurrent training slots.
    pub const ACTIVE: [TrainingStatus; 2] = [Self::Training, Self::Validating];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Training => "training",
            Self::Validating => "validating",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    pub fn counts_toward_limit(self) -> bool {
        Self::COUNTED.contains(&self)
    }
}

impl fmt::Display for TrainingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown training status {0:?}; expected one of pending, queued, training, validating, completed, failed, cancelled"
)]
pub struct UnknownStatus(pub String);

impl FromStr for TrainingStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// What happened to a job. Each event names its cause so the machine can refuse nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusEvent {
    /// The job was placed in the training queue.
    Enqueue,
    /// A worker claimed the job and training began.
    Start,
    /// Training produced a file; quality validation began.
    BeginValidation,
    /// Validation passed (or an admin approved).
    Complete,
    /// A run was lost (expired lease, preempted host) and may be tried again.
    Requeue,
    /// Something went wrong that will not be retried.
    Fail,
    /// The owner cancelled.
    Cancel,
    /// A completed LoRA's file is gone from storage for good (the generator's hand-off found it
    /// missing on two checks 10 minutes apart, `handoff::MISSING_FOR_GOOD_AFTER`). Its own event
    /// rather than `Fail` from `completed`: `Fail` stays refused on final statuses, so a late
    /// worker report can never fail a finished LoRA; only this verified loss can.
    FileLost,
}

impl StatusEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enqueue => "enqueue",
            Self::Start => "start",
            Self::BeginValidation => "begin_validation",
            Self::Complete => "complete",
            Self::Requeue => "requeue",
            Self::Fail => "fail",
            Self::Cancel => "cancel",
            Self::FileLost => "file_lost",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a LoRA that is {from} cannot {}", event.as_str().replace('_', " "))]
pub struct TransitionError {
    pub from: TrainingStatus,
    pub event: StatusEvent,
}

/// The status machine: the status after `event` happens to a job in status `from`.
pub fn transition(
    from: TrainingStatus,
    event: StatusEvent,
) -> Result<TrainingStatus, TransitionError> {
    use StatusEvent as E;
    use TrainingStatus as S;
    let to = match (from, event) {
        (S::Pending, E::Enqueue) => S::Queued,
        (S::Queued, E::Start) => S::Training,
        (S::Training, E::BeginValidation) => S::Validating,
        (S::Validating, E::Complete) => S::Completed,
        (S::Training, E::Requeue) => S::Queued,
        (s, E::Fail) if !s.is_final() => S::Failed,
        (s, E::Cancel) if !s.is_final() => S::Cancelled,
        (S::Completed, E::FileLost) => S::Failed,
        _ => return Err(TransitionError { from, event }),
    };
    Ok(to)
}

impl TrainingStatus {
    /// Method form of [`transition`].
    pub fn apply(self, event: StatusEvent) -> Result<TrainingStatus, TransitionError> {
        transition(self, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatusEvent as E;
    use TrainingStatus as S;

    const EVENTS: [StatusEvent; 8] = [
        E::Enqueue,
        E::Start,
        E::BeginValidation,
        E::Complete,
        E::Requeue,
        E::Fail,
        E::Cancel,
        E::FileLost,
    ];

    /// The whole table, written out: every (status, event) pair and its expected outcome.
    fn expected(from: S, ev: E) -> Option<S> {
        match (from, ev) {
            (S::Pending, E::Enqueue) => Some(S::Queued),
            (S::Queued, E::Start) => Some(S::Training),
            (S::Training, E::BeginValidation) => Some(S::Validating),
            (S::Validating, E::Complete) => Some(S::Completed),
            (S::Training, E::Requeue) => Some(S::Queued),
            (S::Pending | S::Queued | S::Training | S::Validating, E::Fail) => Some(S::Failed),
            (S::Pending | S::Queued | S::Training | S::Validating, E::Cancel) => Some(S::Cancelled),
            (S::Completed, E::FileLost) => Some(S::Failed),
            _ => None,
        }
    }

    #[test]
    fn every_pair_of_status_and_event_matches_the_table() {
        let mut allowed = 0;
        for from in S::ALL {
            for ev in EVENTS {
                let got = transition(from, ev).ok();
                assert_eq!(got, expected(from, ev), "{from} + {ev:?}");
                allowed += usize::from(got.is_some());
            }
        }
        // 5 forward edges + requeue + fail and cancel from 4 non-final states + a lost file.
        assert_eq!(allowed, 5 + 8 + 1);
    }

    #[test]
    fn final_states_accept_no_event_but_a_lost_file_of_a_completed_one() {
        for from in [S::Completed, S::Failed, S::Cancelled] {
            assert!(from.is_final());
            for ev in EVENTS {
                if (from, ev) == (S::Completed, E::FileLost) {
                    assert_eq!(transition(from, ev), Ok(S::Failed));
                    continue;
                }
                let err = transition(from, ev).unwrap_err();
                assert_eq!(err, TransitionError { from, event: ev });
            }
        }
    }

    #[test]
    fn happy_path_reaches_completed() {
        let mut s = S::Pending;
        for ev in [E::Enqueue, E::Start, E::BeginValidation, E::Complete] {
            s = s.apply(ev).unwrap();
        }
        assert_eq!(s, S::Completed);
    }

    #[test]
    fn limit_counting_excludes_failed_and_cancelled() {
        let counted: Vec<_> = S::ALL
            .into_iter()
            .filter(|s| s.counts_toward_limit())
            .collect();
        assert_eq!(counted, S::COUNTED);
        assert!(!S::Failed.counts_toward_limit());
        assert!(!S::Cancelled.counts_toward_limit());
    }

    #[test]
    fn status_strings_round_trip() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("running".parse::<S>().is_err());
    }

    #[test]
    fn error_message_reads_as_a_sentence() {
        let e = transition(S::Completed, E::BeginValidation).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a LoRA that is completed cannot begin validation"
        );
    }
}
