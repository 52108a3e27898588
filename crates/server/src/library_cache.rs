//! A short-lived cache of library listings (`GET /api/v1/lora-models`), holding the serialized
//! JSON of each answer. The library is read far more often than it changes, and popular queries
//! repeat, so most listings are served without touching the database.
//!
//! Freshness: every change made through this process (`AppState::notify_changed`) empties the
//! cache at once; changes made by other replicas show after at most `ttl`. Time is the injected
//! clock, so tests can step past the TTL. `ttl = 0` turns the cache off.
//!
//! Misses are single-flight: when an entry is missing or expired, one request per key runs the
//! query while the others wait on that key's gate and then read its result, so an expiry under
//! load costs one query, not one per waiting connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use loraforge_db::LoraQuery;

/// Entries kept at most; past that the cache starts over (cheap, and bounded memory).
const MAX_ENTRIES: usize = 4096;

#[derive(Debug)]
pub struct LibraryCache {
    ttl: chrono::Duration,
    entries: Mutex<HashMap<String, (DateTime<Utc>, Bytes)>>,
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held by the one request recomputing a key; dropping it lets the waiting requests in.
pub struct Gate<'a> {
    cache: &'a LibraryCache,
    key: String,
    gate: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut gates = self.cache.gates.lock().unwrap_or_else(|e| e.into_inner());
        // Three handles are the map's, ours and our guard's (fields drop after this runs):
        // nobody else is waiting, so the gate can go.
        if Arc::strong_count(&self.gate) <= 3 {
            gates.remove(&self.key);
        }
    }
}

impl LibraryCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero()),
            entries: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until no other request is recomputing `key`, then returns a gate that makes this
    /// request the one that does. Check [`Self::get`] again after acquiring it: the request that
    /// held it before has usually filled the entry.
    pub async fn gate(&self, key: &str) -> Gate<'_> {
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
            gates.entry(key.to_owned()).or_default().clone()
        };
        let held = gate.clone().lock_owned().await;
        Gate {
            cache: self,
            key: key.to_owned(),
            gate,
            _held: held,
        }
    }

    pub fn enabled(&self) -> bool {
        self.ttl > chrono::Duration::zero()
    }

    /// The cache key of a validated query: every field that changes the answer.
    pub fn key(q: &LoraQuery) -> String {
        format!(
            "{:?}|{}|{:?}|{:?}|{}|{}|{:?}|{:?}|{}|{}",
            q.status,
            q.search
                .as_deref()
                .map(str::trim)
                .unwrap_or_default()
                .to_lowercase(),
            q.creator,
            q.sort,
            q.limit,
            q.offset,
            q.character_id,
            q.triggered_by_job_id,
            // The owner's own listing (hidden ones too) is not the public one of the same creator.
            q.include_hidden,
            q.awaiting_review
        )
    }

    pub fn get(&self, key: &str, now: DateTime<Utc>) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| now - *at < self.ttl && now >= *at)
            .map(|(_, b)| b.clone())
    }

    pub fn put(&self, key: String, body: Bytes, now: DateTime<Utc>) {
        if !self.enabled() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (now, body));
    }

    /// Something in the library changed here: forget every listing.
    pub fn invalidate(&self) {
        if self.enabled() {
            self.entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn entries_live_for_the_ttl_and_die_on_invalidate() {
        let c = LibraryCache::new(Duration::from_secs(1));
        let now = t("2026-11-23T10:00:00Z");
        c.put("k".into(), Bytes::from_static(b"v"), now);
        assert_eq!(
            c.get("k", now + chrono::Duration::milliseconds(999))
                .as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(c.get("k", now + chrono::Duration::seconds(1)), None);
        c.put("k".into(), Bytes::from_static(b"v"), now);
        c.invalidate();
        assert_eq!(c.get("k", now), None);
    }

    #[tokio::test]
    async fn one_request_per_key_recomputes_at_a_time() {
        let c = Arc::new(LibraryCache::new(Duration::from_secs(1)));
        let now = t("2026-11-23T10:00:00Z");
        let first = c.gate("k").await;
        // A second request for the same key waits; another key does not.
        let waiting = {
            let c = c.clone();
            tokio::spawn(async move {
                let _g = c.gate("k").await;
                c.get("k", now)
            })
        };
        let _other = c.gate("other").await;
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        c.put("k".into(), Bytes::from_static(b"filled"), now);
        drop(first);
        assert_eq!(waiting.await.unwrap().as_deref(), Some(&b"filled"[..]));
        assert!(
            c.gates.lock().unwrap().get("k").is_none(),
            "gates are dropped when unused"
        );
    }

    #[test]
    fn zero_ttl_is_off() {
        let c = LibraryCache::new(Duration::ZERO);
        let now = Utc::now();
        c.put("k".into(), Bytes::from_static(b"v"), now);
        assert_eq!(c.get("k", now), None);
    }

    #[test]
    fn keys_differ_by_every_field_and_ignore_search_case() {
        use loraforge_domain::LoraSort;
        let base = LoraQuery {
            limit: 50,
            ..Default::default()
        };
        let k = LibraryCache::key;
        assert_ne!(
            k(&base),
            k(&LoraQuery {
                offset: 1,
                ..base.clone()
            })
        );
        assert_ne!(
            k(&base),
            k(&LoraQuery {
                sort: LoraSort::Popular,
                ..base.clone()
            })
        );
        assert_ne!(
            k(&base),
            k(&LoraQuery {
                search: Some("a".into()),
                ..base.clone()
            })
        );
        assert_ne!(
            k(&base),
            k(&LoraQuery {
                character_id: Some("c".into()),
                ..base.clone()
            })
        );
        assert_ne!(
            k(&LoraQuery {
                character_id: Some("c".into()),
                ..base.clone()
            }),
            k(&LoraQuery {
                triggered_by_job_id: Some("c".into()),
                ..base.clone()
            })
        );
        assert_ne!(
            k(&base),
            k(&LoraQuery {
                include_hidden: true,
                ..base.clone()
            })
        );
        assert_ne!(
            k(&base),
            k(&LoraQuery {
                awaiting_review: true,
                ..base.clone()
            })
        );
        assert_eq!(
            k(&LoraQuery {
                search: Some(" Cyber ".into()),
                ..base.clone()
            }),
            k(&LoraQuery {
                search: Some("cyber".into()),
                ..base.clone()
            })
        );
    }
}
