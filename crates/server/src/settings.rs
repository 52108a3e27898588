//! What the HTTP layer needs to know, already parsed. The binary builds it from the merged
//! configuration (defaults → file → environment → flags).

use std::time::Duration;

use loraforge_checks::LoraRules;
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
    /// How often an open event stream re-reads the event log, for changes made by other
    /// replicas (changes made through this process wake it at once).
    pub events_poll_interval: Duration,
    /// Downloading images from URLs (`/datasets/from-urls`, `/lora-models/from-references`);
    /// off while its host allow-list is empty.
    pub url_intake: FetchSettings,
    /// The worker API (`/api/v1/worker`).
    pub worker: WorkerApiSettings,
    /// PRD 2's quality rule after training.
    pub validation: ValidationSettings,
    /// The check a trained LoRA file must pass before it is published.
    pub lora_rules: LoraRules,
    /// Testing only: the first this-many uploads through signed `/files` links answer 503, so
    /// tests can see a worker keep its files and retry.
    /// (Checkpoints are not refused: the trained files are what these tests are about.)
    pub debug_fail_uploads: u32,
}

/// What the control plane tells and allows its workers.
#[derive(Debug, Clone)]
pub struct WorkerApiSettings {
    /// How far a worker's heartbeat extends its job's lease (the engine's lease).
    pub lease: Duration,
    /// Lifetime of the signed download and upload URLs in a job (the job timeout and some).
    pub url_ttl: Duration,
    /// How often a worker sends a heartbeat when its trainer is silent.
    pub heartbeat_interval: Duration,
    /// Shortest pause between two progress posts of a worker.
    pub progress_interval: Duration,
    /// Steps between two checkpoints, handed to the trainer (`None`: the trainer's default,
    /// 250). Each checkpoint is uploaded to the blob store, so a lost instance costs at most this
    /// many steps.
    pub checkpoint_every: Option<u32>,
}

impl Default for WorkerApiSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(120),
            url_ttl: Duration::from_secs(3 * 3600),
            heartbeat_interval: Duration::from_secs(10),
            progress_interval: Duration::from_secs(1),
            checkpoint_every: None,
        }
    }
}

/// PRD 2's validation: 3 images, at least 2 of 3 at or above the similarity threshold.
#[derive(Debug, Clone)]
pub struct ValidationSettings {
    /// Lowest similarity (mean cosine of CLIP image embeddings) a validation image may score.
    pub similarity_threshold: f64,
    /// Without a scoring model, complete LoRAs without an admin's review.
    pub auto_approve: bool,
    /// A local CLIP vision model folder the trainer scores with; none → admin review.
    pub scorer: Option<String>,
}

impl Default for ValidationSettings {
    fn default() -> Self {
        Self {
            similarity_threshold: 0.7,
            auto_approve: false,
            scorer: None,
        }
    }
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
            events_poll_interval: Duration::from_secs(2),
            url_intake: FetchSettings::default(),
            worker: WorkerApiSettings::default(),
            validation: ValidationSettings::default(),
            lora_rules: LoraRules::default(),
            debug_fail_uploads: 0,
        }
    }
}

impl ServerSettings {
    /// Largest upload through a signed `/files` link: a LoRA file at the size limit, and room.
    pub fn max_file_upload_bytes(&self) -> usize {
        usize::try_from(self.lora_rules.max_bytes.max(32 * 1024 * 1024) + 1024 * 1024)
            .unwrap_or(usize::MAX)
    }

    /// Largest multipart upload: every image at the size limit plus room for captions and
    /// multipart framing.
    pub fn max_upload_bytes(&self) -> usize {
        let images = self.dataset_rules.max_images as u64 * self.dataset_rules.max_bytes;
        usize::try_from(images + 4 * 1024 * 1024).unwrap_or(usize::MAX)
    }
}
