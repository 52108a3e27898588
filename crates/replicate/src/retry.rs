//! When a failed call is repeated, and how long to wait first.
//!
//! Reads and cancels (`training`, `list_trainings`, `cancel`, `webhook_secret`) are idempotent:
//! they are retried on 429, 5xx and transport failures (timeouts included), as Replicate's
//! Python client does for idempotent methods. The wait is what Replicate asked for when it said
//! so — a `Retry-After` header in seconds or as an HTTP date, else the hint in a 429's body
//! ("Expected available in 1 second.", "… resets in ~30s.") — else exponential from
//! `base_delay`, always capped at `max_delay`.
//!
//! A create (`POST …/trainings`) is never repeated once it may have reached Replicate: it has no
//! idempotency key and a second training is paid twice. It is repeated only when nothing was
//! sent (a failure to connect). Everything else goes back to the caller, which looks for the
//! training by its `loraforge_instance` tag before creating again
//! ([`crate::ReplicateClient::create_training_once`]).

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// How many times a call is repeated after the first attempt (default 4).
    pub max_retries: u32,
    /// The wait before the first repeat when Replicate gave no hint; doubled each time
    /// (default 500 ms, as Replicate's JS client).
    pub base_delay: Duration,
    /// The longest single wait, hints included (default 60 s).
    pub max_delay: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 4,
            base_delay: Duration::from_millis(500),
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

    /// The wait before repeat number `attempt` (0-based): the server's hint, else exponential.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        let computed = self
            .base_delay
            .saturating_mul(2_u32.saturating_pow(attempt.min(20)));
        hint.unwrap_or(computed).min(self.max_delay)
    }
}

/// Whether a call may be repeated after it was (possibly) received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    Idempotent,
    /// Creates something: repeat only when the request certainly was not sent.
    Create,
}

/// The wait a 429 asks for: `Retry-After` (seconds or an HTTP date, judged against `now`),
/// else the body's "in N second(s)" / "in ~Ns".
pub(crate) fn hint(headers: &HeaderMap, body: &[u8], now: SystemTime) -> Option<Duration> {
    if let Some(text) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()) {
        let text = text.trim();
        if let Ok(seconds) = text.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc2822(text) {
            let at = SystemTime::from(at);
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    body_hint(body)
}

/// "Request was throttled. Expected available in 1 second." or "... resets in ~30s.".
fn body_hint(body: &[u8]) -> Option<Duration> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let detail = value.get("detail")?.as_str()?;
    let (_, rest) = detail.rsplit_once(" in ")?;
    let rest = rest.trim_start_matches('~');
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let seconds: u64 = digits.parse().ok()?;
    let unit = rest[digits.len()..].trim_start();
    if unit.starts_with('s') {
        Some(Duration::from_secs(seconds))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn delays_double_and_hints_win() {
        let r = RetrySettings::default();
        assert_eq!(r.delay(0, None), Duration::from_millis(500));
        assert_eq!(r.delay(1, None), Duration::from_millis(1000));
        assert_eq!(r.delay(3, None), Duration::from_millis(4000));
        assert_eq!(
            r.delay(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            r.delay(0, Some(Duration::from_secs(7200))),
            Duration::from_secs(60)
        );
        assert_eq!(r.delay(40, None), Duration::from_secs(60));
    }

    #[test]
    fn hints_from_headers_and_bodies() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        let mut headers = HeaderMap::new();
        let throttled = br#"{"detail":"Request was throttled. Expected available in 1 second."}"#;
        assert_eq!(hint(&headers, throttled, now), Some(Duration::from_secs(1)));
        let resets = br#"{"detail":"Request was throttled. Your rate limit resets in ~30s."}"#;
        assert_eq!(hint(&headers, resets, now), Some(Duration::from_secs(30)));
        assert_eq!(hint(&headers, br#"{"detail":"slow down"}"#, now), None);
        assert_eq!(hint(&headers, b"not json", now), None);

        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(hint(&headers, throttled, now), Some(Duration::from_secs(3)));
        // 2015-10-21 07:28:00 GMT is 10 s after `now`.
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(hint(&headers, b"", now), Some(Duration::from_secs(10)));
        // A date in the past: go now.
        let later = now + Duration::from_secs(60);
        assert_eq!(hint(&headers, b"", later), Some(Duration::ZERO));
    }
}
