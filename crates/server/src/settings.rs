//! What the HTTP layer needs to know, already parsed. The binary builds it from the merged
//! configuration (defaults → file → environment → flags).

use std::time::Duration;

use loraforge_checks::LoraRules;
use loraforge_domain::{
    DatasetQuota, DatasetRetention, DatasetRules, MicroUsd, ParamLimits, UsageLimits,
};
use loraforge_fetch::FetchSettings;

use crate::webhook::WebhookKey;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub limits: UsageLimits,
    pub dataset_rules: DatasetRules,
    /// Datasets and bytes of images a user may store per UTC day.
    pub dataset_quota: DatasetQuota,
    /// How long datasets are kept (the dataset sweep in `maintenance`).
    pub dataset_retention: DatasetRetention,
    /// Show creators' e-mail addresses in the library (an operator's opt-in; off: only display
    /// names, and each owner sees their own address).
    pub show_creator_emails: bool,
    pub param_limits: ParamLimits,
    /// How long a signed download URL stays valid.
    pub download_url_ttl: Duration,
    /// Origins allowed by CORS; empty disables CORS, `*` allows any origin (no credentials).
    pub cors_origins: Vec<String>,
    /// Largest JSON body accepted, bytes.
    pub max_json_bytes: usize,
    /// How long a library listing may be served from memory; zero turns the cache off.
    pub library_cache_ttl: Duration,
    /// The public library in memory (`library_index`): `None` answers every listing from the
    /// database; `Some(lag)` answers the public library's pages and searches from memory, with
    /// other replicas' changes showing within `lag` (zero: the change feed is read before every
    /// answer).
    pub library_index_lag: Option<Duration>,
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
    /// Bytes of decoded pixels all image checks together may hold at once (estimated from each
    /// header before decoding); an image needing more than this alone is refused
    /// (`too_large_to_decode`), others wait for room.
    pub decode_budget_bytes: u64,
    /// Longest an image check waits for room in the decode budget before the upload is answered
    /// 503 `server_busy`.
    pub decode_wait: Duration,
    /// Connection limits and timeouts of the HTTP server.
    pub http: HttpSettings,
    /// The Replicate account's webhook signing key (`POST /api/v1/webhooks/replicate`); `None`:
    /// the route answers 404 `webhook_not_configured`.
    pub replicate_webhook_key: Option<WebhookKey>,
    /// The system budget and the storage price (`LORAFORGE_MONTHLY_BUDGET_USD`, …).
    pub costs: CostSettings,
    /// Quotes and credits (`LORAFORGE_CREDITS`, the backends' prices).
    pub credits: CreditSettings,
    /// Webhooks to clients (a LoRA's `webhook`): the address rule and the delivery loop.
    pub client_webhooks: ClientWebhookSettings,
    /// The operator monitors' thresholds (`monitors::run_monitors`, run by `maintenance`).
    pub monitors: crate::monitors::MonitorSettings,
    /// Whether creators are e-mailed when a LoRA finishes (an SMTP server is configured).
    pub finish_mails: bool,
    /// Reports of LoRAs and hiding them (`routes/reports.rs`, `routes/admin_reports.rs`).
    pub moderation: ModerationSettings,
    /// The web UI served at `/` (`routes/ui.rs`).
    pub ui: UiSettings,
}

/// Content moderation: how often a user may report, and when reports raise an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModerationSettings {
    /// Reports one user may file per minute (a token bucket per user and process); 0: no limit.
    pub reports_per_minute: u32,
    /// A LoRA with this many open reports raises the `lora_reported` operator alert (deduplicated
    /// within the alert cooldown); 0 turns the alert off.
    pub alert_after_reports: u32,
}

impl Default for ModerationSettings {
    fn default() -> Self {
        Self {
            reports_per_minute: 10,
            alert_after_reports: 3,
        }
    }
}

/// What the web UI needs from the composition root.
#[derive(Debug, Clone, Default)]
pub struct UiSettings {
    /// One-click local sign-in (`/api/v1/auth/local`): `Some` only when the server is bound to a
    /// loopback address and its JWT secret was generated by the service (not configured); the
    /// route then answers loopback peers only.
    pub local_sign_in: Option<LocalSignIn>,
    /// Origins (`scheme://host[:port]`) other than the UI's own that signed file and image links
    /// point at (the local blob store's `public_url` when it differs from the page's origin); the
    /// Content-Security-Policy lets images and requests reach them. `https:` is always allowed
    /// for images and requests (S3 presigned URLs), never for scripts or styles.
    pub asset_origins: Vec<String>,
}

/// The local admin the one-click sign-in issues tokens for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSignIn {
    pub user: loraforge_domain::UserId,
    pub email: String,
    /// How long its tokens are valid.
    pub ttl: Duration,
}

/// Money settings the API and the maintenance loop need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostSettings {
    /// The monthly budget when no admin set one (`PUT /api/v1/admin/budget` overrides it).
    pub monthly_budget: MicroUsd,
    /// The budget warning's threshold, percent.
    pub alert_percent: u32,
    /// What a GB (10^9 bytes) of stored LoRA files costs per month.
    pub storage_price_per_gb_month: MicroUsd,
}

impl Default for CostSettings {
    fn default() -> Self {
        Self {
            monthly_budget: MicroUsd::from_dollars(200),
            alert_percent: 75,
            storage_price_per_gb_month: MicroUsd(23_000),
        }
    }
}

/// Quotes (`POST /api/v1/quotes`) and credits (seed 003).
#[derive(Debug, Clone, Default)]
pub struct CreditSettings {
    /// Creates reserve their quote from the owner's credits; off: no credits are kept.
    pub enabled: bool,
    /// Each backend's configured price per hour, by backend name (per-second prices × 3600). A
    /// backend missing here (RunPod pods: priced per pod at launch; `local`) is quoted from its
    /// runs' recorded prices, or without a cost.
    pub prices_per_hour: std::collections::BTreeMap<String, loraforge_domain::MicroUsd>,
}

/// How client webhooks are checked and delivered (`client_webhooks`).
#[derive(Debug, Clone)]
pub struct ClientWebhookSettings {
    /// Allow webhook URLs on loopback, private and link-local addresses (tests, closed
    /// networks). Off: such a URL is refused at create (422 `invalid_webhook`) and never
    /// connected to.
    pub allow_private_addresses: bool,
    /// Time allowed for one delivery attempt (connect, send, answer).
    pub timeout: Duration,
    /// How often the outbox is turned into deliveries and due deliveries are sent.
    pub interval: Duration,
}

impl Default for ClientWebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_addresses: false,
            timeout: Duration::from_secs(10),
            interval: Duration::from_secs(2),
        }
    }
}

/// How long the HTTP server waits for a client, and how many it serves at once.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// A request's head (request line and headers) must arrive within this time of the
    /// connection opening or of the previous response ending.
    pub header_timeout: Duration,
    /// Longest pause between two pieces of a request body before the request is abandoned.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long silent.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(20),
            max_connections: 1024,
        }
    }
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
    /// The control plane's URL as workers and providers reach it; the job's `dataset_zip` link
    /// points here (`None`: no link is handed out).
    pub public_url: Option<url::Url>,
}

impl Default for WorkerApiSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(120),
            url_ttl: Duration::from_secs(3 * 3600),
            heartbeat_interval: Duration::from_secs(10),
            progress_interval: Duration::from_secs(1),
            checkpoint_every: None,
            public_url: None,
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
            dataset_quota: DatasetQuota::default(),
            dataset_retention: DatasetRetention::default(),
            show_creator_emails: false,
            param_limits: ParamLimits::default(),
            download_url_ttl: Duration::from_secs(3600),
            cors_origins: Vec::new(),
            max_json_bytes: 256 * 1024,
            library_cache_ttl: Duration::from_secs(1),
            library_index_lag: Some(Duration::from_secs(1)),
            events_poll_interval: Duration::from_secs(2),
            url_intake: FetchSettings::default(),
            worker: WorkerApiSettings::default(),
            validation: ValidationSettings::default(),
            lora_rules: LoraRules::default(),
            debug_fail_uploads: 0,
            decode_budget_bytes: 192 * 1024 * 1024,
            decode_wait: Duration::from_secs(30),
            http: HttpSettings::default(),
            replicate_webhook_key: None,
            costs: CostSettings::default(),
            credits: CreditSettings::default(),
            client_webhooks: ClientWebhookSettings::default(),
            monitors: crate::monitors::MonitorSettings::default(),
            finish_mails: false,
            moderation: ModerationSettings::default(),
            ui: UiSettings::default(),
        }
    }
}

impl ServerSettings {
    /// Largest upload through a signed `/files` link: a LoRA file at the size limit, and room.
    pub fn max_file_upload_bytes(&self) -> usize {
        usize::try_from(self.lora_rules.max_bytes.max(32 * 1024 * 1024) + 1024 * 1024)
            .unwrap_or(usize::MAX)
    }

    /// Most parts a multipart upload may have: an image and a caption for each allowed image,
    /// and one spare so that one part too many is reported as that.
    pub fn max_upload_parts(&self) -> usize {
        self.dataset_rules.max_images * 2 + 1
    }

    /// Largest multipart upload: every image at the size limit plus room for captions and
    /// multipart framing.
    pub fn max_upload_bytes(&self) -> usize {
        let images = self.dataset_rules.max_images as u64 * self.dataset_rules.max_bytes;
        usize::try_from(images + 4 * 1024 * 1024).unwrap_or(usize::MAX)
    }
}
