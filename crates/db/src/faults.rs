//! Failure injection for tests: places where the repository fails on purpose, once per arming.

use std::sync::atomic::Ordering;

use crate::{DbError, Result};

/// Places where tests can make the repository fail on purpose (meilisearch-style failure
/// injection). Each armed point fires once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The monthly-limit count inside `create_lora`; the create must fail open.
    MonthlyCount,
    /// Recording a run's outcome (`record_run_outcome`), e.g. the worker's result.
    RunOutcome,
    /// Settling a run (`settle_run`): a requeue, a failure or the publish of a trained LoRA.
    Settle,
    /// Recording that a run's instance is gone (`record_instance_gone`), with its cost.
    InstanceGone,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 4] = [
        FaultPoint::MonthlyCount,
        FaultPoint::RunOutcome,
        FaultPoint::Settle,
        FaultPoint::InstanceGone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultPoint::MonthlyCount => "monthly_count",
            FaultPoint::RunOutcome => "run_outcome",
            FaultPoint::Settle => "settle",
            FaultPoint::InstanceGone => "instance_gone",
        }
    }

    pub fn parse(s: &str) -> Option<FaultPoint> {
        FaultPoint::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn index(self) -> usize {
        FaultPoint::ALL
            .iter()
            .position(|p| *p == self)
            .expect("listed")
    }
}

/// Armed fault points; each arming makes the point fail once.
#[derive(Debug, Default)]
pub struct Faults {
    armed: [std::sync::atomic::AtomicU32; 4],
}

impl Faults {
    /// Makes `point` fail once more.
    pub fn arm(&self, point: FaultPoint) {
        self.armed[point.index()].fetch_add(1, Ordering::SeqCst);
    }
    /// True once per arming of `point`.
    pub fn fire(&self, point: FaultPoint) -> bool {
        self.armed[point.index()]
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
    /// `Err(Injected)` once per arming of `point`.
    pub fn check(&self, point: FaultPoint) -> Result<()> {
        if self.fire(point) {
            Err(DbError::Injected(point))
        } else {
            Ok(())
        }
    }
}
