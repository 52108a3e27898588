//! The composition root: turns settings into concrete implementations (SQLite or Postgres,
//! local disk or S3) and hands them to the server as trait objects.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};

use loraforge_checks::LoraRules;
use loraforge_db::{ConnectOptions, Repository, redact_url};
use loraforge_domain::{DatasetRules, ParamLimits, SystemClock, UsageLimits};
use loraforge_fetch::{FetchSettings, HostPattern};
use loraforge_server::{AppState, JwtKeys, ServerSettings};
use loraforge_storage::StorageSettings;
use loraforge_storage::s3::S3Settings;

use crate::settings::{Settings, absolute};

pub fn server_settings(s: &Settings) -> ServerSettings {
    ServerSettings {
        limits: UsageLimits {
            monthly_loras: s.monthly_limit,
            concurrent_jobs: s.max_concurrent_jobs,
            creates_per_minute: s.creates_per_minute,
        },
        dataset_rules: DatasetRules {
            min_images: s.dataset_min_images,
            max_images: s.dataset_max_images,
            min_bytes: s.image_min_bytes,
            max_bytes: s.image_max_bytes,
            min_side: s.image_min_side,
            max_pixels: s.image_max_megapixels.saturating_mul(1_000_000),
            allow_webp: s.allow_webp,
        },
        param_limits: ParamLimits {
            min_steps: s.min_steps,
            min_resolution: s.min_resolution,
            local_model_roots: s.local_model_roots.iter().map(|p| absolute(p)).collect(),
        },
        download_url_ttl: Duration::from_secs(s.download_url_ttl_secs.max(1)),
        library_cache_ttl: Duration::from_millis(s.library_cache_ms),
        cors_origins: s.cors_origins.clone(),
        url_intake: fetch_settings(s),
        ..ServerSettings::default()
    }
}

/// Image URL downloads. Host patterns were validated when the settings were loaded.
pub fn fetch_settings(s: &Settings) -> FetchSettings {
    FetchSettings {
        allowed_hosts: s.image_url_allowed_hosts.iter().filter_map(|h| HostPattern::parse(h).ok()).collect(),
        allow_private_addresses: s.image_url_allow_private_addresses,
        timeout: Duration::from_secs(s.download_timeout_secs.max(1)),
        cache_dir: (s.download_cache_ttl_secs > 0).then(|| absolute(&s.data_dir.join("cache").join("downloads"))),
        cache_ttl: Duration::from_secs(s.download_cache_ttl_secs),
        ..FetchSettings::default()
    }
}

/// The LoRA file rules of `inspect` and of the upload check before publishing.
pub fn lora_rules(s: &Settings) -> LoraRules {
    LoraRules { min_bytes: s.lora_min_bytes, max_bytes: s.lora_max_bytes, scan_values: true }
}

/// Local signed links use a key derived from the JWT secret, so there is one secret to manage.
fn file_signing_key(jwt: &SecretSlice<u8>) -> SecretSlice<u8> {
    let mut h = Sha256::new();
    h.update(b"loraforge-file-url-key\0");
    h.update(jwt.expose_secret());
    SecretSlice::from(h.finalize().to_vec())
}

pub fn storage_settings(s: &Settings, jwt: &SecretSlice<u8>) -> anyhow::Result<StorageSettings> {
    let url = s
        .storage_url
        .clone()
        .unwrap_or_else(|| format!("file://{}", absolute(&s.data_dir.join("blobs")).display()));
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            bail!("storage_url {url:?} has no path; use file:///absolute/path");
        }
        return Ok(StorageSettings::Local {
            root: absolute(&PathBuf::from(path)),
            public_base_url: s.public_url()?,
            signing_key: Arc::new(file_signing_key(jwt)),
        });
    }
    if url.starts_with("s3://") {
        let mut s3 = S3Settings::from_url(&url)?;
        s3.endpoint = s
            .s3_endpoint
            .as_deref()
            .map(url::Url::parse)
            .transpose()
            .context("s3_endpoint is not a URL")?;
        s3.region = s.s3_region.clone();
        s3.access_key_id = s.s3_access_key_id.clone();
        s3.secret_access_key = s.s3_secret_access_key.clone();
        s3.allow_http = s.s3_allow_http;
        s3.path_style = s.s3_path_style;
        return Ok(StorageSettings::S3(s3));
    }
    bail!("storage_url {url:?} is not supported; use file:///path or s3://bucket/prefix")
}

/// The configured database, connected and migrated.
pub async fn repository(s: &Settings) -> anyhow::Result<Arc<dyn Repository>> {
    std::fs::create_dir_all(&s.data_dir).with_context(|| format!("creating data dir {}", s.data_dir.display()))?;
    let db_url = s.database_url();
    loraforge_db::connect(&db_url, &ConnectOptions { max_connections: s.database_max_connections })
        .await
        .with_context(|| format!("opening database {}", redact_url(&db_url)))
}

/// Everything `serve` needs, connected and migrated.
pub async fn app_state(s: &Settings) -> anyhow::Result<AppState> {
    let repo = repository(s).await?;
    let jwt_secret = s.jwt_secret()?;
    let store = loraforge_storage::open(&storage_settings(s, &jwt_secret)?).context("opening storage")?;
    Ok(AppState::new(repo, store, Arc::new(SystemClock), JwtKeys::new(&jwt_secret), server_settings(s)))
}
