//! Outbound HTTP for URLs that users hand us (dataset images by URL, reference images). It is
//! the only crate that opens connections to addresses chosen by users, so it owns the defences:
//! an allow-list of hosts, refusal of loopback/private/link-local/metadata addresses checked on
//! the *resolved* address that is then the one connected to (no DNS rebinding), redirects
//! re-vetted hop by hop, a size cap enforced while streaming, retries with exponential backoff
//! for transient failures only, and an on-disk cache whose TTL is judged by the injected clock.

mod cache;
mod download;
mod error;
mod policy;
mod resolver;
mod vetted;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use loraforge_domain::Clock;

pub use cache::DiskCache;
pub use download::Downloaded;
pub use error::FetchError;
pub use policy::{HostPattern, forbidden_reason};
pub use vetted::{check_shape, vet_url, vetted_client};

pub type Result<T, E = FetchError> = std::result::Result<T, E>;

/// How downloads behave. Built by the composition root from `image_url_*` and `download_*`
/// settings; tests shrink the backoff and allow private addresses to reach their loopback server.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Hosts URLs may point at; empty refuses every URL.
    pub allowed_hosts: Vec<HostPattern>,
    /// Allow loopback, private, link-local and other non-public addresses (tests, closed networks).
    pub allow_private_addresses: bool,
    /// Total time for one attempt (connect, headers and body).
    pub timeout: Duration,
    /// Attempts per URL, at least 1.
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each further one.
    pub backoff_base: Duration,
    /// Redirects followed per attempt, each re-vetted.
    pub max_redirects: u32,
    /// Folder of the download cache; `None` turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// How long a cached download is reused.
    pub cache_ttl: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allow_private_addresses: false,
            timeout: Duration::from_secs(30),
            attempts: 3,
            backoff_base: Duration::from_millis(500),
            max_redirects: 3,
            cache_dir: None,
            cache_ttl: Duration::from_secs(3600),
        }
    }
}

impl FetchSettings {
    /// Whether any URL can be downloaded at all.
    pub fn is_enabled(&self) -> bool {
        !self.allowed_hosts.is_empty()
    }
}

/// Downloads user-supplied URLs under [`FetchSettings`]. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    settings: Arc<FetchSettings>,
    cache: Option<DiskCache>,
    clock: Arc<dyn Clock>,
}

impl Fetcher {
    /// Fails only when the HTTP client cannot be built (TLS set-up).
    pub fn new(settings: FetchSettings, clock: Arc<dyn Clock>) -> Result<Self> {
        let resolver = resolver::VettingResolver::new(settings.allow_private_addresses);
        let client = reqwest::Client::builder()
            // Redirects are followed by hand so every hop is re-vetted.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect for us to addresses we never vetted.
            .no_proxy()
            .dns_resolver(Arc::new(resolver))
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("loraforge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        let cache = settings
            .cache_dir
            .clone()
            .map(|dir| DiskCache::new(dir, settings.cache_ttl));
        Ok(Self {
            client,
            settings: Arc::new(settings),
            cache,
            clock,
        })
    }

    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }
}
