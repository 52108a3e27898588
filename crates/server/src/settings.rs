//! What the HTTP layer needs to know, already parsed. The binary builds it from the merged
//! configuration (defaults → file → environment → flags).

use std::time::Duration;

use loraforge_domain::{DatasetRules, ParamLimits, UsageLimits};
use loraforge_fetch::FetchSettings;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub limits: UsageLimits,
    pub dataset_rules: DatasetRules,
    pub param_limits: ParamLimits,
    /// How long a signed download URL stays valid.
    pub download_url_ttl: Duration,
    /// Origins allowed by CORS; empty disables CORS, `*` allows any origin (no credentials).
    pub cors_origins: Vec<String>,
    /// Largest JSON body accepted, bytes.
    pub max_json_bytes: usize,
    /// How long a library listing may be served from memory; zero turns the cache off.
    pub library_cache_ttl: Duration,
    /// Downloading images from URLs (`/datasets/from-urls`, `/lora-models/from-references`);
    /// off while its host allow-list is empty.
    pub url_intake: FetchSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            limits: UsageLimits::default(),
            dataset_rules: DatasetRules::default(),
            param_limits: ParamLimits::default(),
            download_url_ttl: Duration::from_secs(3600),
            cors_origins: Vec::new(),
            max_json_bytes: 256 * 1024,
            library_cache_ttl: Duration::from_secs(1),
            url_intake: FetchSettings::default(),
        }
    }
}

impl ServerSettings {
    /// Largest multipart upload: every image at the size limit plus room for captions and
    /// multipart framing.
    pub fn max_upload_bytes(&self) -> usize {
        let images = self.dataset_rules.max_images as u64 * self.dataset_rules.max_bytes;
        usize::try_from(images + 4 * 1024 * 1024).unwrap_or(usize::MAX)
    }
}
