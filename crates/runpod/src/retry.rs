//! When a failed call is repeated.
//!
//! Reads and deletes (`pod`, `list_pods`, `terminate_pod`, `status`, `cancel`, `health`) are
//! idempotent: they are retried on 429, 5xx and transport failures (timeouts included), waiting
//! `base_delay`, then twice that, then four times (2 s, 4 s, 8 s by default); a `Retry-After`
//! header replaces the computed wait (capped at `max_delay`).
//!
//! Creates (`deploy_pod`, `run`) are not idempotent: RunPod has no idempotency key, so repeating
//! a create whose first attempt reached the server can provision a second pod (billed by the
//! hour) or run the job twice. They are retried only when the first attempt certainly was not
//! processed, which is only a failure to connect (nothing was sent). A timeout, a dropped
//! connection or a 5xx after the request was sent is returned to the caller, which finds an
//! already-created pod by its name (`list_pods`) before creating again. A 429 is returned too
//! (`RateLimited { retry_after }`, `is_retryable()`): RunPod does not document 429s for GraphQL
//! [U], so nothing says such a create was refused before any work, and the caller, which sees
//! every rate limit, is the right place to slow down.

use std::time::Duration;

/// Retry timing; the defaults follow RunPod's advice of exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// How many times a call is repeated after the first attempt (default 3).
    pub max_retries: u32,
    /// The wait before the first repeat; doubled each time (default 2 s).
    pub base_delay: Duration,
    /// The longest single wait, also for `Retry-After` (default 60 s).
    pub max_delay: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetrySettings {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The wait before repeat number `attempt` (0-based), unless the server said otherwise.
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let computed = self
            .base_delay
            .saturating_mul(2_u32.saturating_pow(attempt));
        retry_after.unwrap_or(computed).min(self.max_delay)
    }
}

/// Whether a call may be repeated after it was (possibly) received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    Idempotent,
    /// Creates something; repeat only when the first attempt certainly was not processed.
    Create,
}
