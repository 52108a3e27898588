//! Per-user rate limiting of creates: a token bucket per user on the injected clock, so tests
//! can step time instead of sleeping. State is per process: with several replicas each enforces
//! the limit on its own share of traffic (documented in ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use loraforge_domain::UserId;

#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<UserId, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

impl RateLimiter {
    /// `per_minute` = 0 disables the limit.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `user`; `Err(seconds until one is available)` when empty.
    pub fn check(&self, user: UserId, now: DateTime<Utc>) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(self.per_minute);
        let per_sec = cap / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Keep memory bounded: drop buckets that have refilled completely.
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| (now - b.at).num_seconds() < 60);
        }
        let b = buckets.entry(user).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        let elapsed = (now - b.at).num_milliseconds().max(0) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * per_sec).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn allows_burst_then_refills_over_time() {
        let rl = RateLimiter::new(10);
        let u = UserId::new();
        let t0: DateTime<Utc> = "2026-11-23T10:00:00Z".parse().unwrap();
        for _ in 0..10 {
            assert!(rl.check(u, t0).is_ok());
        }
        assert_eq!(rl.check(u, t0), Err(6));
        // Another user has their own bucket.
        assert!(rl.check(UserId::new(), t0).is_ok());
        // One token back after 6 s.
        assert!(rl.check(u, t0 + Duration::seconds(6)).is_ok());
        assert!(rl.check(u, t0 + Duration::seconds(6)).is_err());
        // Full again after a minute.
        for _ in 0..10 {
            assert!(rl.check(u, t0 + Duration::seconds(70)).is_ok());
        }
    }

    #[test]
    fn zero_disables() {
        let rl = RateLimiter::new(0);
        let u = UserId::new();
        for _ in 0..1000 {
            assert!(rl.check(u, Utc::now()).is_ok());
        }
    }
}
