//! Nudges of a training backend for every replica's job engine (migration 0022): a provider's
//! webhook says something changed on `backend`, it reaches one replica, and the run it is about
//! may be watched by another replica's engine. The webhook route records the nudge; each engine
//! reads the nudges at every tick and observes a backend nudged since its last read at once,
//! instead of after the backend's poll interval. One row per backend, its latest nudge.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::Result;

#[async_trait]
pub trait NudgeStore: Send + Sync {
    /// Records that `backend` was nudged at `at`. A later nudge replaces an earlier one, never
    /// the other way round (replicas' clocks and deliveries race).
    async fn nudge_backend(&self, backend: &str, at: DateTime<Utc>) -> Result<()>;

    /// Every backend ever nudged, with its latest nudge.
    async fn backend_nudges(&self) -> Result<Vec<(String, DateTime<Utc>)>>;
}

/// The upsert of a nudge, the same text on both engines (`$1` backend, `$2` time).
pub(crate) const NUDGE: &str = "INSERT INTO backend_nudges (backend, nudged_at) VALUES ($1, $2) \
     ON CONFLICT (backend) DO UPDATE SET nudged_at = excluded.nudged_at \
     WHERE backend_nudges.nudged_at < excluded.nudged_at";

pub(crate) const NUDGES: &str = "SELECT backend, nudged_at FROM backend_nudges ORDER BY backend";
