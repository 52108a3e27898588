//! Shared state of the HTTP layer: the seams (repository, blob store, clock) as trait objects,
//! chosen by the composition root.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use loraforge_db::Repository;
use loraforge_domain::{Clock, LoraId};
use loraforge_storage::BlobStore;

use crate::auth::JwtKeys;
use crate::rate_limit::RateLimiter;
use crate::settings::ServerSettings;

#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    repo: Arc<dyn Repository>,
    store: Arc<dyn BlobStore>,
    clock: Arc<dyn Clock>,
    jwt: JwtKeys,
    settings: ServerSettings,
    create_limiter: RateLimiter,
    changes: broadcast::Sender<LoraId>,
}

impl AppState {
    pub fn new(
        repo: Arc<dyn Repository>,
        store: Arc<dyn BlobStore>,
        clock: Arc<dyn Clock>,
        jwt: JwtKeys,
        settings: ServerSettings,
    ) -> Self {
        let (changes, _) = broadcast::channel(1024);
        let create_limiter = RateLimiter::new(settings.limits.creates_per_minute);
        Self(Arc::new(Inner { repo, store, clock, jwt, settings, create_limiter, changes }))
    }

    pub fn repo(&self) -> &dyn Repository {
        self.0.repo.as_ref()
    }
    pub fn store(&self) -> &dyn BlobStore {
        self.0.store.as_ref()
    }
    pub fn now(&self) -> DateTime<Utc> {
        self.0.clock.now()
    }
    pub fn jwt(&self) -> &JwtKeys {
        &self.0.jwt
    }
    pub fn settings(&self) -> &ServerSettings {
        &self.0.settings
    }
    pub fn create_limiter(&self) -> &RateLimiter {
        &self.0.create_limiter
    }

    /// Wakes SSE streams of this process watching `id` (others poll the event log).
    pub fn notify_changed(&self, id: LoraId) {
        // No receivers is fine: nobody is watching.
        let _ = self.0.changes.send(id);
    }
    pub fn subscribe_changes(&self) -> broadcast::Receiver<LoraId> {
        self.0.changes.subscribe()
    }
}
