//! Shared state of the HTTP layer: the seams (repository, blob store, clock) as trait objects,
//! chosen by the composition root.

use crate::usage_writer::UsageWriter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use loraforge_checks::DecodeBudget;
use loraforge_db::Repository;
use loraforge_domain::breaker::BreakerRules;
use loraforge_domain::{Clock, LoraId};
use loraforge_fetch::Fetcher;
use loraforge_storage::BlobStore;

use crate::auth::JwtKeys;
use crate::library_cache::LibraryCache;
use crate::library_index::LiveIndex;
use crate::metrics::MetricsEndpoint;
use crate::rate_limit::RateLimiter;
use crate::settings::ServerSettings;
use crate::webhook::SeenIds;

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
    library_cache: LibraryCache,
    library_index: Option<LiveIndex>,
    changes: broadcast::Sender<LoraId>,
    /// `None` only when the HTTP client could not be built (logged at start-up).
    fetcher: Option<Fetcher>,
    /// Uploads still to refuse (`ServerSettings::debug_fail_uploads`).
    upload_faults: AtomicU32,
    /// Wakes this process's job engine on every change, when it runs one.
    engine_wake: Option<Arc<tokio::sync::Notify>>,
    /// This process's job engine, as `/readyz` reports it, when it runs one.
    engine_probe: Option<Arc<dyn EngineProbe>>,
    /// Makes this process's job engine observe a backend's runs at its next tick.
    engine_nudge: Option<Arc<dyn EngineNudge>>,
    /// The configured training backends, in the router's order, and their breakers' rules
    /// (`GET /api/v1/admin/backends`).
    backends: Vec<BackendInfo>,
    breaker_rules: BreakerRules,
    /// Decoded pixels in memory at once, for every request of this process.
    decode_budget: Arc<DecodeBudget>,
    /// Webhook deliveries already taken (`routes/webhooks.rs`).
    webhook_seen: SeenIds,
    /// `GET /metrics`: the installed recorder and the scrape token; `None`: no recorder (404).
    metrics: Option<MetricsEndpoint>,
    /// Reports per user (`ModerationSettings::reports_per_minute`).
    report_limiter: RateLimiter,
    /// The hand-out's uses, group-committed (`usage_writer`).
    usage: Arc<UsageWriter>,
}

/// A configured training backend, as the composition root describes it to the admin view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    pub name: String,
    /// Runs at once: per engine for a host's own processes, in all for a provider's API.
    pub max_runs: usize,
    /// Its instances are reachable from any replica (a provider's API), not only this host.
    pub shared: bool,
}

/// What `/readyz` is told of this process's job engine (the composition root adapts the engine's
/// own health record; the server knows no engine type).
pub trait EngineProbe: Send + Sync + std::fmt::Debug {
    fn status(&self) -> EngineStatus;
}

/// How a provider's webhook reaches this process's job engine (the composition root adapts the
/// engine; the server knows no engine type): the engine observes `backend`'s runs at its next
/// tick instead of waiting for that backend's poll interval.
pub trait EngineNudge: Send + Sync + std::fmt::Debug {
    fn observe_soon(&self, backend: &str);
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStatus {
    /// Its loop is running.
    pub running: bool,
    /// Seconds since its last tick finished (`None`: none yet).
    pub last_tick_age_secs: Option<i64>,
    /// A tick older than this means the loop is stuck.
    pub stale_after_secs: i64,
    /// Loops restarted after a panic.
    pub restarts: u32,
    /// Why no backend can train now (e.g. the trainer's environment is missing); `None`: some can.
    pub cannot_train: Option<String>,
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
        let report_limiter = RateLimiter::new(settings.moderation.reports_per_minute);
        let library_cache = LibraryCache::new(settings.library_cache_ttl);
        let library_index = settings
            .library_index_lag
            .map(|lag| LiveIndex::new(lag, settings.show_creator_emails));
        let fetcher = Fetcher::new(settings.url_intake.clone(), clock.clone())
            .map_err(|e| tracing::error!(error = %e, "URL downloads are unavailable"))
            .ok();
        let upload_faults = AtomicU32::new(settings.debug_fail_uploads);
        let decode_budget = Arc::new(DecodeBudget::new(
            settings.decode_budget_bytes,
            settings.decode_wait,
        ));
        let usage = UsageWriter::new(repo.clone());
        Self(Arc::new(Inner {
            usage,
            repo,
            store,
            clock,
            jwt,
            settings,
            create_limiter,
            library_cache,
            library_index,
            changes,
            fetcher,
            upload_faults,
            engine_wake: None,
            engine_probe: None,
            engine_nudge: None,
            backends: Vec::new(),
            breaker_rules: BreakerRules::default(),
            decode_budget,
            webhook_seen: SeenIds::default(),
            metrics: None,
            report_limiter,
        }))
    }

    pub fn repo(&self) -> &dyn Repository {
        self.0.repo.as_ref()
    }
    pub fn repo_handle(&self) -> &Arc<dyn Repository> {
        &self.0.repo
    }
    pub fn store(&self) -> &dyn BlobStore {
        self.0.store.as_ref()
    }
    /// The blob store, shared (the job engine's after-training steps use the same one).
    pub fn store_handle(&self) -> Arc<dyn BlobStore> {
        self.0.store.clone()
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
    /// Downloads user-supplied URLs under the configured allow-list and SSRF rules.
    pub fn fetcher(&self) -> Option<&Fetcher> {
        self.0.fetcher.as_ref()
    }
    /// The decode budget every image check of this process takes its memory from.
    pub fn decode_budget(&self) -> Arc<DecodeBudget> {
        self.0.decode_budget.clone()
    }
    pub fn create_limiter(&self) -> &RateLimiter {
        &self.0.create_limiter
    }

    pub fn usage(&self) -> &Arc<UsageWriter> {
        &self.0.usage
    }

    pub fn report_limiter(&self) -> &RateLimiter {
        &self.0.report_limiter
    }

    pub fn library_cache(&self) -> &LibraryCache {
        &self.0.library_cache
    }

    /// Something a library listing shows changed through this process: cached pages go, and the
    /// in-memory library reads the change feed before its next answer.
    pub fn library_changed(&self) {
        self.0.library_cache.invalidate();
        if let Some(index) = &self.0.library_index {
            index.changed();
        }
    }

    /// The public library in memory, unless the operator turned it off.
    pub fn library_index(&self) -> Option<&LiveIndex> {
        self.0.library_index.as_ref()
    }

    /// Wakes `wake` (the job engine of this process) on every change. Call before sharing the
    /// state.
    pub fn with_engine_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.engine_wake = Some(wake),
            None => {
                tracing::warn!("the job engine's wake-up is not set: the state was already shared")
            }
        }
        self
    }

    /// Reports `probe` in `/readyz`. Call before sharing the state.
    pub fn with_engine_probe(mut self, probe: Arc<dyn EngineProbe>) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.engine_probe = Some(probe),
            None => tracing::warn!("the engine probe is not set: the state was already shared"),
        }
        self
    }

    /// Lets provider webhooks make the job engine observe a backend sooner
    /// ([`Self::nudge_engine`]). Call before sharing the state.
    pub fn with_engine_nudge(mut self, nudge: Arc<dyn EngineNudge>) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.engine_nudge = Some(nudge),
            None => tracing::warn!("the engine nudge is not set: the state was already shared"),
        }
        self
    }

    /// Names the configured backends (in order) and the rules of their breakers, for the admin
    /// view. Call before sharing the state.
    pub fn with_backends(mut self, backends: Vec<BackendInfo>, rules: BreakerRules) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => {
                inner.backends = backends;
                inner.breaker_rules = rules;
            }
            None => tracing::warn!("the backends are not set: the state was already shared"),
        }
        self
    }

    /// Serves `GET /metrics` from this recorder's handle. Call before sharing the state.
    pub fn with_metrics(mut self, metrics: MetricsEndpoint) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.metrics = Some(metrics),
            None => tracing::warn!("metrics are not served: the state was already shared"),
        }
        self
    }

    pub fn metrics(&self) -> Option<&MetricsEndpoint> {
        self.0.metrics.as_ref()
    }

    pub fn backends(&self) -> &[BackendInfo] {
        &self.0.backends
    }

    pub fn breaker_rules(&self) -> &BreakerRules {
        &self.0.breaker_rules
    }

    pub fn engine_probe(&self) -> Option<&dyn EngineProbe> {
        self.0.engine_probe.as_deref()
    }

    /// Something about `id` changed: drops cached library listings, wakes SSE streams of this
    /// process watching it (other processes poll the event log) and this process's job engine.
    pub fn notify_changed(&self, id: LoraId) {
        self.library_changed();
        if let Some(wake) = &self.0.engine_wake {
            wake.notify_one();
        }
        // No receivers is fine: nobody is watching.
        let _ = self.0.changes.send(id);
    }
    /// Wakes this process's job engine (when it runs one) without naming a LoRA: a provider
    /// said something changed, and the engine finds out what by observing its runs.
    pub fn wake_engine(&self) {
        if let Some(wake) = &self.0.engine_wake {
            wake.notify_one();
        }
    }

    /// A provider said something changed on `backend`: this process's job engine (when it runs
    /// one) observes that backend's runs at once, not only when its poll interval has passed.
    pub fn nudge_engine(&self, backend: &str) {
        if let Some(nudge) = &self.0.engine_nudge {
            nudge.observe_soon(backend);
        }
        self.wake_engine();
    }

    /// Webhook ids this process has taken.
    pub fn webhook_seen(&self) -> &SeenIds {
        &self.0.webhook_seen
    }

    /// Testing only: whether this upload is one of the first `debug_fail_uploads` to refuse.
    pub fn take_upload_fault(&self) -> bool {
        self.0
            .upload_faults
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
    pub fn subscribe_changes(&self) -> broadcast::Receiver<LoraId> {
        self.0.changes.subscribe()
    }
}
