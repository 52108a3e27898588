//! Standard Webhooks signatures (what Replicate signs its webhooks with;
//! `shared/research/api-contracts.md` §3) and the memory of deliveries already taken.
//!
//! A delivery carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (space-separated `v1,<base64>` entries). The signed content is `{id}.{timestamp}.{raw body}`,
//! the MAC is HMAC-SHA256 under the base64-decoded part of the secret after `whsec_`, compared in
//! constant time. A timestamp more than [`TOLERANCE_SECS`] from the injected clock is stale.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a delivery's timestamp may be from now, either way (the documented 5 minutes).
pub const TOLERANCE_SECS: i64 = 5 * 60;
/// Longest `webhook-id` taken, bytes.
const MAX_ID_LEN: usize = 256;

/// A webhook signing secret (`whsec_<base64>`), decoded. `Debug` never shows it.
#[derive(Clone)]
pub struct WebhookKey(Arc<SecretSlice<u8>>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey([REDACTED])")
    }
}

impl WebhookKey {
    /// Parses the secret as the provider shows it: `whsec_` then base64 (the prefix may be
    /// left out). The error never repeats the secret.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let b64 = secret.trim();
        let b64 = b64.strip_prefix("whsec_").unwrap_or(b64);
        let key = STANDARD.decode(b64).map_err(|_| {
            "the webhook secret must be `whsec_` followed by base64 (as Replicate's \
             GET /webhooks/default/secret returns it)"
                .to_owned()
        })?;
        if key.is_empty() {
            return Err("the webhook secret is empty".into());
        }
        Ok(Self(Arc::new(SecretSlice::from(key))))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value this key gives a delivery (for tests and fakes).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// Why a delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Headers missing or malformed, or no signature entry matches.
    #[error("{0}")]
    InvalidSignature(&'static str),
    /// Signed, but its timestamp is too far from now (a replay of an old delivery, or a clock off).
    #[error("the webhook's timestamp is {age_secs} s from now, more than {TOLERANCE_SECS} s")]
    Stale { age_secs: i64 },
}

/// A delivery's three headers, as received.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Checks a delivery: its signature first (an unsigned request learns nothing about time), then
/// its age. Returns the `webhook-id`.
pub fn verify<'a>(
    key: &WebhookKey,
    d: Delivery<'a>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<&'a str, WebhookError> {
    let (Some(id), Some(timestamp), Some(signature)) = (d.id, d.timestamp, d.signature) else {
        return Err(WebhookError::InvalidSignature(
            "the webhook-id, webhook-timestamp and webhook-signature headers are required",
        ));
    };
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(WebhookError::InvalidSignature(
            "webhook-id must be 1–256 printable ASCII characters",
        ));
    }
    let Ok(sent) = timestamp.parse::<i64>() else {
        return Err(WebhookError::InvalidSignature(
            "webhook-timestamp must be Unix seconds",
        ));
    };
    let mac = key.mac(id, timestamp, body);
    let matched = signature.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|b64| STANDARD.decode(b64).ok())
            // `verify_slice` compares in constant time and refuses a wrong length.
            .is_some_and(|tag| mac.clone().verify_slice(&tag).is_ok())
    });
    if !matched {
        return Err(WebhookError::InvalidSignature(
            "no v1 entry of webhook-signature matches this body under the configured secret",
        ));
    }
    let age = now.timestamp().saturating_sub(sent);
    if age.saturating_abs() > TOLERANCE_SECS {
        return Err(WebhookError::Stale { age_secs: age });
    }
    Ok(id)
}

/// `webhook-id`s already taken, remembered for [`SeenIds::KEEP_SECS`] and at most
/// [`SeenIds::CAPACITY`] of them (the oldest go first). In memory: each replica remembers its
/// own deliveries, so a duplicate that reaches another replica only wakes that replica's engine
/// once more, which observes the provider and finds nothing new (harmless by design).
#[derive(Debug, Default)]
pub struct SeenIds {
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    at: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
}

impl SeenIds {
    /// Longer than a delivery is accepted (± [`TOLERANCE_SECS`]) and than Replicate retries the
    /// terminal webhook (about a minute).
    pub const KEEP_SECS: i64 = 3600;
    pub const CAPACITY: usize = 10_000;

    /// Whether `id` is new (and remembers it from `now`).
    pub fn first_time(&self, id: &str, now: DateTime<Utc>) -> bool {
        let now = now.timestamp();
        let mut seen = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, old)) = seen.order.front().cloned() {
            if now - at < Self::KEEP_SECS && seen.order.len() < Self::CAPACITY {
                break;
            }
            seen.order.pop_front();
            if seen.at.get(&old) == Some(&at) {
                seen.at.remove(&old);
            }
        }
        if seen.at.contains_key(id) {
            return false;
        }
        seen.at.insert(id.to_owned(), now);
        seen.order.push_back((now, id.to_owned()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector of api-contracts.md §3.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_2bGm7Ky9ZWxqXjR4";
    const TS: &str = "1700000000";
    const BODY: &[u8] = br#"{"id":"zz4ibbonubfz7carwiefibzgga","status":"succeeded"}"#;
    const SIGNATURE: &str = "v1,zXQj/fN7fKtFI8gIQxVo6jHkxMa7j2zRj/l6mc54CV4=";

    fn at(unix: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(unix, 0).unwrap()
    }

    fn delivery<'a>(signature: &'a str) -> Delivery<'a> {
        Delivery {
            id: Some(ID),
            timestamp: Some(TS),
            signature: Some(signature),
        }
    }

    #[test]
    fn the_documented_test_vector_verifies() {
        let key = WebhookKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(ID, 1_700_000_000, BODY), SIGNATURE);
        assert_eq!(
            verify(&key, delivery(SIGNATURE), BODY, at(1_700_000_000)),
            Ok(ID)
        );
        // Among other entries (rotated secrets, future versions), in any position.
        let several = format!("v2,AAAA v1,bm90IGl0 {SIGNATURE}");
        assert_eq!(
            verify(&key, delivery(&several), BODY, at(1_700_000_100)),
            Ok(ID)
        );
        // Without the prefix the secret is the same key.
        let bare = WebhookKey::parse(SECRET.trim_start_matches("whsec_")).unwrap();
        assert!(verify(&bare, delivery(SIGNATURE), BODY, at(1_700_000_000)).is_ok());
    }

    #[test]
    fn anything_changed_is_an_invalid_signature() {
        let key = WebhookKey::parse(SECRET).unwrap();
        let now = at(1_700_000_000);
        let invalid =
            |r: Result<&str, WebhookError>| matches!(r, Err(WebhookError::InvalidSignature(_)));
        let tampered = br#"{"id":"zz4ibbonubfz7carwiefibzgga","status":"failed"}"#;
        assert!(invalid(verify(&key, delivery(SIGNATURE), tampered, now)));
        let other_id = Delivery {
            id: Some("msg_other"),
            ..delivery(SIGNATURE)
        };
        assert!(invalid(verify(&key, other_id, BODY, now)));
        let other_ts = Delivery {
            timestamp: Some("1700000001"),
            ..delivery(SIGNATURE)
        };
        assert!(invalid(verify(&key, other_ts, BODY, now)));
        for sig in [
            "",
            "v1,",
            "v1,!!!",
            "zXQj/fN7fKtFI8gIQxVo6jHkxMa7j2zRj/l6mc54CV4=",
            "v2,zXQj/fN7fKtFI8gIQxVo6jHkxMa7j2zRj/l6mc54CV4=",
        ] {
            assert!(invalid(verify(&key, delivery(sig), BODY, now)), "{sig:?}");
        }
        let other_key =
            WebhookKey::parse("whsec_c2VjcmV0LWtleS1vZi1hbm90aGVyLWFjY291bnQ=").unwrap();
        assert!(invalid(verify(&other_key, delivery(SIGNATURE), BODY, now)));
        // The key is the decoded base64, not the text (the documentation's known mistake).
        let text_key = WebhookKey(Arc::new(SecretSlice::from(SECRET.as_bytes()[6..].to_vec())));
        assert!(invalid(verify(&text_key, delivery(SIGNATURE), BODY, now)));
        for missing in [
            Delivery {
                id: None,
                ..delivery(SIGNATURE)
            },
            Delivery {
                timestamp: None,
                ..delivery(SIGNATURE)
            },
            Delivery {
                signature: None,
                ..delivery(SIGNATURE)
            },
            Delivery {
                timestamp: Some("soon"),
                ..delivery(SIGNATURE)
            },
            Delivery {
                id: Some(""),
                ..delivery(SIGNATURE)
            },
        ] {
            assert!(invalid(verify(&key, missing, BODY, now)));
        }
        assert!(WebhookKey::parse("whsec_***").is_err());
        assert!(WebhookKey::parse("whsec_").is_err());
    }

    #[test]
    fn five_minutes_either_way_then_stale() {
        let key = WebhookKey::parse(SECRET).unwrap();
        for now in [1_700_000_000 - 300, 1_700_000_000 + 300] {
            assert!(verify(&key, delivery(SIGNATURE), BODY, at(now)).is_ok());
        }
        assert_eq!(
            verify(&key, delivery(SIGNATURE), BODY, at(1_700_000_301)),
            Err(WebhookError::Stale { age_secs: 301 })
        );
        assert_eq!(
            verify(&key, delivery(SIGNATURE), BODY, at(1_700_000_000 - 301)),
            Err(WebhookError::Stale { age_secs: -301 })
        );
        // A stale delivery with a bad signature says only that the signature is bad.
        assert!(matches!(
            verify(&key, delivery("v1,AAAA"), BODY, at(0)),
            Err(WebhookError::InvalidSignature(_))
        ));
    }

    #[test]
    fn seen_ids_are_remembered_for_an_hour_and_bounded() {
        let seen = SeenIds::default();
        assert!(seen.first_time("a", at(1000)));
        assert!(!seen.first_time("a", at(1001)));
        assert!(seen.first_time("b", at(1001)));
        assert!(!seen.first_time("a", at(1000 + SeenIds::KEEP_SECS - 1)));
        assert!(seen.first_time("a", at(1000 + SeenIds::KEEP_SECS)));
        let full = SeenIds::default();
        for i in 0..SeenIds::CAPACITY + 5 {
            assert!(full.first_time(&format!("id-{i}"), at(5000)));
        }
        let inner = full.inner.lock().unwrap();
        assert!(inner.order.len() <= SeenIds::CAPACITY && inner.at.len() == inner.order.len());
        assert!(!inner.at.contains_key("id-0"), "the oldest went first");
    }
}
