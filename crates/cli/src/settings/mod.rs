//! Configuration: typed defaults → optional `loraforge.toml` → `LORAFORGE_*` environment →
//! command-line flags, each layer overriding the one before. Every key below is also an
//! environment variable: `monthly_limit` ↔ `LORAFORGE_MONTHLY_LIMIT`. Lists (`cors_origins`,
//! `local_model_roots`) are comma-separated in the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Deserialize;

mod alerts;
mod backends;
mod costs;
mod describe;
mod private;

pub(crate) use backends::backend_choices;
use private::write_private;
pub use private::{absolute, create_private_dir, restrict_umask};

#[derive(Debug, Deserialize)]
pub struct Settings {
    /// Address the HTTP server listens on.
    pub bind: SocketAddr,
    /// Folder for the SQLite database, local blobs and the generated JWT secret.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; default `sqlite://<data_dir>/loraforge.db`.
    pub database_url: Option<SecretString>,
    /// Max database connections of this process.
    pub database_max_connections: u32,
    /// `file://PATH` or `s3://bucket/prefix`; default `file://<data_dir>/blobs`.
    pub storage_url: Option<String>,
    /// Base URL clients reach this service at (for local signed file links); default `http://<bind>`.
    pub public_url: Option<String>,
    /// HS256 secret for API tokens; when unset one is generated once into `<data_dir>/jwt-secret`.
    pub jwt_secret: Option<SecretString>,
    /// Audiences (`aud`) a user's token may carry, one match enough; Supabase access tokens carry
    /// `authenticated`. The first is put into tokens `loraforge token` issues.
    pub jwt_audience: Vec<String>,
    /// Accept user tokens without an `aud` claim too.
    pub jwt_allow_missing_audience: bool,
    /// LoRAs per user per UTC calendar month.
    pub monthly_limit: u32,
    /// Jobs per user training at once; the rest wait as queued.
    pub max_concurrent_jobs: u32,
    /// LoRA creates per user per minute (0 = unlimited).
    pub creates_per_minute: u32,
    /// Reports of LoRAs one user may file per minute (0 = unlimited).
    pub reports_per_minute: u32,
    /// Open reports of one LoRA that raise the `lora_reported` operator alert (0 = no alert).
    pub report_alert_threshold: u32,
    /// Lowest accepted `steps` (004 says 100; lower it to train tiny test models).
    pub min_steps: u32,
    /// Lowest accepted `resolution`, pixels (004 says 256).
    pub min_resolution: u32,
    /// Absolute folders a local base model may live in; default `<data_dir>/models`.
    pub local_model_roots: Vec<PathBuf>,
    /// Base models users may train on: Hugging Face ids and absolute folders (comma-separated);
    /// default SDXL base 1.0. Models under `local_model_roots` are allowed too.
    pub allowed_base_models: Vec<String>,
    /// Images per dataset, inclusive bounds.
    pub dataset_min_images: usize,
    pub dataset_max_images: usize,
    /// Per-image file size window, bytes.
    pub image_min_bytes: u64,
    pub image_max_bytes: u64,
    /// Smallest accepted width and height, pixels.
    pub image_min_side: u32,
    /// Largest accepted image, megapixels (refused before decoding).
    pub image_max_megapixels: u64,
    /// Accept WebP images besides JPEG and PNG.
    pub allow_webp: bool,
    /// Datasets a user may store per UTC calendar day.
    pub datasets_per_day: u32,
    /// Bytes of images a user may store per UTC calendar day (counted per dataset).
    pub dataset_bytes_per_day: u64,
    /// A dataset no LoRA uses is deleted this long after it was stored, seconds (default 7 days).
    pub unused_dataset_retention_secs: u64,
    /// The images of a dataset whose LoRAs have all finished are deleted this long after the last
    /// finished, seconds; unset keeps them (LoRA files are never deleted).
    pub trained_dataset_image_retention_secs: Option<u64>,
    /// Show creators' e-mail addresses to every user in the library (off: display names only;
    /// owners and admins still see the owner's address on a LoRA).
    pub show_creator_emails: bool,
    /// `on`: a create reserves its quote from the owner's credits (402 when they do not cover
    /// it), a completed LoRA is charged its actual cost, a failed or cancelled one refunded;
    /// `off` (default): no credits are charged.
    pub credits: String,
    /// Lifetime of signed download URLs, seconds.
    pub download_url_ttl_secs: u64,
    /// How long a library listing may be served from memory, milliseconds (0 = off). Changes made
    /// through this process show at once; other replicas' within this time.
    pub library_cache_ms: u64,
    /// Keep the public library in memory and answer its pages and searches from there (`false`:
    /// every listing queries the database).
    pub library_index: bool,
    /// How far the in-memory library may lag changes made through other replicas, milliseconds
    /// (0: it reads the change feed before every answer). Changes made through this process show
    /// at once.
    pub library_index_lag_ms: u64,
    /// Hosts image URLs may point at: `images.example.com` or `*.example.com`; empty refuses
    /// every image URL.
    pub image_url_allowed_hosts: Vec<String>,
    /// Let image URLs reach loopback, private, link-local and other non-public addresses
    /// (closed networks and tests only: it opens the server to SSRF).
    pub image_url_allow_private_addresses: bool,
    /// Let client webhooks (a LoRA's `webhook`) reach loopback, private, link-local and other
    /// non-public addresses (closed networks and tests only: it opens the server to SSRF).
    pub webhook_allow_private_addresses: bool,
    /// Time for one webhook delivery attempt, seconds.
    pub webhook_timeout_secs: u64,
    /// How long a downloaded image is reused from `<data_dir>/cache/downloads`, seconds (0 = off).
    pub download_cache_ttl_secs: u64,
    /// Time for one download attempt (connect, headers and body), seconds.
    pub download_timeout_secs: u64,
    /// Smallest and largest trained LoRA file accepted, bytes.
    pub lora_min_bytes: u64,
    pub lora_max_bytes: u64,
    /// Origins allowed by CORS (`*` for any); empty disables CORS.
    pub cors_origins: Vec<String>,
    /// S3-compatible endpoint (MinIO, R2, …); unset means AWS.
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<SecretString>,
    /// Allow plain-HTTP endpoints (local MinIO, tests).
    pub s3_allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`), needed by most S3-compatible servers.
    pub s3_path_style: bool,
    /// `text` or `json` log lines.
    pub log_format: String,
    /// Run the job engine inside `serve` (train created LoRAs). Off: LoRAs wait as pending.
    pub engine_enabled: bool,
    /// This engine's name in job leases; stable across restarts of one host, unique per replica.
    /// Default: `local-<hash of the data dir>`.
    pub worker_id: Option<String>,
    /// Training runs at once on this host (the local backend's slots).
    pub training_concurrency: usize,
    /// Where training runs, in order of preference: `local` (this host), `runpod` (GPU pods),
    /// `runpod-serverless` (jobs on a RunPod Serverless endpoint), `replicate` (Replicate
    /// trainings of our Cog model), `docker` (containers on a Docker host), `aitoolkit` (an
    /// ai-toolkit UI's job queue) (`backends::BACKEND_NAMES`). A job goes to the first admitted one
    /// with room.
    pub backends: Vec<String>,
    /// RunPod API key (for `runpod` and `runpod-serverless`). Secret.
    pub runpod_api_key: Option<SecretString>,
    /// RunPod's GraphQL endpoint; default `https://api.runpod.io/graphql`.
    pub runpod_graphql_url: Option<String>,
    /// The worker image pods run (`docker/worker.Dockerfile`).
    pub runpod_image: Option<String>,
    /// GPU types to ask for, in order; the next is tried when one has no capacity.
    pub runpod_gpu_types: Vec<String>,
    /// `all`, `secure` or `community`.
    pub runpod_cloud_type: String,
    /// Container disk per pod, GB.
    pub runpod_container_disk_gb: u32,
    /// Pod volume, GB (none by default).
    pub runpod_volume_gb: Option<u32>,
    /// A network volume for the Hugging Face cache (base weights downloaded once).
    pub runpod_network_volume_id: Option<String>,
    /// Pods at once, across every replica.
    pub runpod_max_pods: usize,
    /// The Serverless endpoint whose workers run the worker image's RunPod handler (for
    /// `runpod-serverless`).
    pub runpod_endpoint_id: Option<String>,
    /// RunPod's Serverless API; default `https://api.runpod.ai/v2`.
    pub runpod_serverless_url: Option<String>,
    /// What the endpoint costs per second of execution, decimal dollars (its GPU's price; the
    /// default 0.00031 is an example, not any GPU's price: set yours).
    pub runpod_serverless_price_per_second: String,
    /// Serverless jobs at once, across every replica.
    pub runpod_serverless_max_jobs: usize,
    /// How often the RunPod pods are listed to see ones that ended or vanished, seconds.
    pub runpod_observe_secs: u64,
    /// Replicate API token (for `replicate`). Secret.
    pub replicate_api_token: Option<SecretString>,
    /// Replicate's API; default `https://api.replicate.com/v1`.
    pub replicate_api_url: String,
    /// The Cog model version trainings run (`cog/`), `owner/name:version`.
    pub replicate_model: Option<String>,
    /// The model (`owner/name`) trained versions go to; it must exist on Replicate.
    pub replicate_destination: Option<String>,
    /// What a second of a training's `predict_time` costs, decimal dollars (the default 0.0014
    /// is an example, not any GPU's price: set yours).
    pub replicate_price_per_second: String,
    /// Replicate trainings at once, across every replica.
    pub replicate_max_runs: usize,
    /// How often the Replicate trainings are polled (webhooks only make it sooner), seconds.
    pub replicate_observe_secs: u64,
    /// The Docker Engine the `docker` backend uses: `unix:///var/run/docker.sock` (default),
    /// `tcp://HOST:PORT` or `http://HOST:PORT`.
    pub docker_host: String,
    /// The worker image containers run (`docker/worker.Dockerfile`); pulled when missing.
    pub docker_image: Option<String>,
    /// GPUs per container: `all` (default), a count, device ids (`0,1`), or `none` (CPU host).
    pub docker_gpus: String,
    /// Memory limit per container, MiB (none by default).
    pub docker_memory_mb: Option<u64>,
    /// CPU limit per container, in CPUs (`2`, `1.5`; none by default).
    pub docker_cpus: Option<String>,
    /// A Docker network to attach containers to (Docker's default bridge when unset).
    pub docker_network: Option<String>,
    /// Containers at once on the Docker host, across every replica.
    pub docker_max_runs: usize,
    /// How often the containers are listed to see ones that ended or vanished, seconds.
    pub docker_observe_secs: u64,
    /// The ai-toolkit web UI the `aitoolkit` backend trains on (`http://host:8675`).
    pub aitoolkit_url: Option<String>,
    /// ai-toolkit's `AI_TOOLKIT_AUTH` token, sent as `Bearer`; none when the UI checks none.
    /// Secret.
    pub aitoolkit_token: Option<SecretString>,
    /// ai-toolkit jobs at once, across every replica (one GPU queue runs one job).
    pub aitoolkit_max_runs: usize,
    /// The GPU queue ai-toolkit jobs go to (`gpu_ids`).
    pub aitoolkit_gpu_ids: String,
    /// What the ai-toolkit host costs per hour, decimal dollars; none records no cost.
    pub aitoolkit_price_per_hour: Option<String>,
    /// What the Docker host costs per hour while a container runs, decimal dollars; none records
    /// no cost.
    pub docker_price_per_hour: Option<String>,
    /// How often ai-toolkit's jobs are read (progress, end), seconds.
    pub aitoolkit_observe_secs: u64,
    /// Steps between two training checkpoints (each is uploaded to the blob store, so a lost
    /// instance costs at most this many steps); default: the trainer's, 250.
    pub checkpoint_every_steps: Option<u32>,
    /// The Replicate account's webhook signing secret (`whsec_…`, from Replicate's
    /// `GET /v1/webhooks/default/secret`): `POST /api/v1/webhooks/replicate` verifies deliveries
    /// with it and makes the engine observe the trainings at once; unset, that route answers 404
    /// and trainings are created without a `webhook` (polling alone follows them). Secret.
    pub replicate_webhook_secret: Option<SecretString>,
    /// Record Prometheus metrics and serve them at `GET /metrics` (`serve` only).
    pub metrics_enabled: bool,
    /// When set, `GET /metrics` needs `Authorization: Bearer <this>`; unset, it is open. Secret.
    pub metrics_token: Option<SecretString>,
    /// Let remote workers call back to a loopback `public_url` (tests only: a real pod cannot
    /// reach it).
    pub allow_loopback_callbacks: bool,
    /// A run training longer than this is killed and failed, seconds.
    pub job_timeout_secs: u64,
    /// How far a claim or a worker's heartbeat extends a job's lease, seconds.
    pub job_lease_secs: u64,
    /// Time between two rounds of the job engine, milliseconds.
    pub engine_poll_ms: u64,
    /// Provider-side failures of one backend (launch errors that may pass, lost or vanished
    /// runs) within `breaker_window_secs` that open its circuit breaker.
    pub breaker_failures: u32,
    /// The window in which a backend's failures are counted, seconds.
    pub breaker_window_secs: u64,
    /// How long an open breaker keeps runs off its backend before one probe is let through,
    /// seconds.
    pub breaker_open_secs: u64,
    /// A half-open probe whose engine neither launched nor failed within this is given to another
    /// replica, seconds.
    pub breaker_probe_timeout_secs: u64,
    /// The URL workers call back to; default: this server's bound address on loopback.
    pub worker_callback_url: Option<String>,
    /// First pause between retries of a worker's HTTP calls, milliseconds (doubles: 3 retries).
    pub worker_retry_delay_ms: u64,
    /// Lowest similarity score a validation image may have to count as the character.
    pub validation_similarity_threshold: f64,
    /// Without a scoring model, complete trained LoRAs without waiting for an admin's review.
    pub validation_auto_approve: bool,
    /// A local CLIP vision model folder to score validation images with (none: admin review).
    pub validation_scorer: Option<String>,
    /// Testing only: refuse the first this-many worker uploads with 503.
    pub debug_fail_uploads: u32,
    /// The system budget per UTC month, decimal dollars; new jobs wait queued once the month's
    /// spend plus what running jobs are expected to cost would pass it. An admin's
    /// `PUT /api/v1/admin/budget` overrides it.
    pub monthly_budget_usd: String,
    /// The budget warning alert's threshold, percent of the budget (1–100).
    pub budget_alert_percent: u32,
    /// What a GB (10^9 bytes) of stored LoRA files costs per month, decimal dollars (the cost
    /// ledger's `storage` entries).
    pub storage_price_per_gb_month: String,
    /// What this host costs per hour while a `local` run goes, decimal dollars (0: free).
    pub local_price_per_hour: String,
    /// Bytes of decoded pixels all image checks together may hold at once; an image needing
    /// more alone is refused (`too_large_to_decode`), others wait for room.
    pub decode_budget_bytes: u64,
    /// Longest an image check waits for room in the decode budget before the upload is
    /// answered 503 `server_busy`, seconds.
    pub decode_wait_secs: u64,
    /// A request head must arrive within this many seconds of the connection opening or of the
    /// previous response.
    pub http_header_timeout_secs: u64,
    /// Longest pause inside a request body before the request is answered 408, seconds.
    pub http_body_timeout_secs: u64,
    /// A keep-alive connection with no request in flight is closed after this many silent
    /// seconds.
    pub http_idle_timeout_secs: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub http_max_connections: usize,
    /// An existing Python interpreter that has the trainer's pinned packages; when unset the
    /// venv at `trainer_venv` (made by `loraforge setup-trainer`) is used.
    pub trainer_python: Option<PathBuf>,
    /// Where `loraforge setup-trainer` builds the trainer's venv; default `<data_dir>/trainer-venv`.
    pub trainer_venv: Option<PathBuf>,
    /// Another occurrence of an open alert (same kind and subject) within this long of its first
    /// sighting is counted on it, not sent again: `3600`, `90s`, `30m`, `1h`, `2d`; default 1h.
    pub alert_cooldown: Option<String>,
    /// A Slack incoming webhook URL alerts are posted to (`{"text": …}`). Secret.
    pub alert_slack_webhook_url: Option<SecretString>,
    /// A URL alerts are posted to as JSON (id, kind, subject, message, count, first_seen,
    /// last_seen). Secret.
    pub alert_webhook_url: Option<SecretString>,
    /// Operators' e-mail addresses alerts are sent to, comma-separated (needs `smtp_url`).
    pub alert_email_to: Option<String>,
    /// The SMTP server for e-mail: `smtp://host:25` (plain), `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS) or `smtps://user:pass@host:465` (TLS). Secret.
    pub smtp_url: Option<SecretString>,
    /// The sender of e-mails, `loraforge <noreply@example.com>` or an address.
    pub mail_from: Option<String>,
    /// Alert on a job training longer than this (duration like `alert_cooldown`); default 2h.
    pub monitor_training_alert_after: Option<String>,
    /// Cancel a job training longer than this; default 3h.
    pub monitor_training_cancel_after: Option<String>,
    /// Alert when more than this percent of the LoRAs finished in 24 h failed; default 10.
    pub monitor_failure_rate_percent: Option<u32>,
    /// … once at least this many finished; default 10.
    pub monitor_failure_min_samples: Option<u64>,
    /// Alert when LoRAs completed this month cost more than this on average, decimal dollars;
    /// default 2.50.
    pub monitor_max_avg_cost: Option<String>,
    /// LoRAs expected per month; more created this month than this prorated to today alerts;
    /// default 1000.
    pub monitor_loras_per_month: Option<u64>,
    /// Alert when stored LoRA files cost more than this per month, decimal dollars; default 100.
    pub monitor_max_storage_cost: Option<String>,
    /// Alert on a run whose instance is not gone after this many failed terminations; default 3.
    pub monitor_cleanup_failures: Option<u32>,
}

/// Flags that override everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub bind: Option<String>,
}

const LIST_KEYS: [&str; 7] = [
    "cors_origins",
    "jwt_audience",
    "local_model_roots",
    "allowed_base_models",
    "image_url_allowed_hosts",
    "backends",
    "runpod_gpu_types",
];

impl Settings {
    pub fn load(over: &Overrides) -> anyhow::Result<Self> {
        let moderation = loraforge_server::settings::ModerationSettings::default();
        let mut b = config::Config::builder()
            .set_default("bind", "127.0.0.1:8080")?
            .set_default("data_dir", "./data")?
            .set_default("database_max_connections", 16)?
            .set_default("jwt_audience", vec!["authenticated"])?
            .set_default("jwt_allow_missing_audience", true)?
            .set_default("monthly_limit", 5)?
            .set_default("max_concurrent_jobs", 2)?
            .set_default("creates_per_minute", 10)?
            .set_default("reports_per_minute", moderation.reports_per_minute)?
            .set_default("report_alert_threshold", moderation.alert_after_reports)?
            .set_default("min_steps", 100)?
            .set_default("min_resolution", 256)?
            .set_default("local_model_roots", Vec::<String>::new())?
            .set_default(
                "allowed_base_models",
                vec![loraforge_domain::params::DEFAULT_BASE_MODEL],
            )?
            .set_default("dataset_min_images", 3)?
            .set_default("dataset_max_images", 20)?
            .set_default("image_min_bytes", 100 * 1024)?
            .set_default("image_max_bytes", 10 * 1024 * 1024)?
            .set_default("image_min_side", 512)?
            .set_default("image_max_megapixels", 40)?
            .set_default("allow_webp", false)?
            .set_default("datasets_per_day", 50)?
            .set_default("dataset_bytes_per_day", 2u64 * 1024 * 1024 * 1024)?
            .set_default("unused_dataset_retention_secs", 7 * 86_400)?
            .set_default("show_creator_emails", false)?
            .set_default("credits", "off")?
            .set_default("metrics_enabled", true)?
            .set_default("download_url_ttl_secs", 3600)?
            .set_default("library_cache_ms", 1000)?
            .set_default("library_index", true)?
            .set_default("library_index_lag_ms", 1000)?
            .set_default("image_url_allowed_hosts", Vec::<String>::new())?
            .set_default("image_url_allow_private_addresses", false)?
            .set_default("webhook_allow_private_addresses", false)?
            .set_default("webhook_timeout_secs", 10)?
            .set_default("download_cache_ttl_secs", 3600)?
            .set_default("download_timeout_secs", 30)?
            .set_default("lora_min_bytes", 5 * 1024 * 1024)?
            .set_default("lora_max_bytes", 200 * 1024 * 1024)?
            .set_default("cors_origins", Vec::<String>::new())?
            .set_default("s3_region", "us-east-1")?
            .set_default("s3_allow_http", false)?
            .set_default("s3_path_style", false)?
            .set_default("log_format", "text")?
            .set_default("engine_enabled", true)?
            .set_default("training_concurrency", 1)?
            .set_default("backends", vec!["local"])?
            .set_default(
                "runpod_gpu_types",
                vec!["NVIDIA GeForce RTX 3090", "NVIDIA A40"],
            )?
            .set_default("runpod_cloud_type", "all")?
            .set_default("runpod_container_disk_gb", 40)?
            .set_default("runpod_max_pods", 10)?
            .set_default("runpod_serverless_price_per_second", "0.00031")?
            .set_default("runpod_serverless_max_jobs", 10)?
            .set_default("runpod_observe_secs", 15)?
            .set_default("replicate_api_url", "https://api.replicate.com/v1")?
            .set_default("replicate_price_per_second", "0.0014")?
            .set_default("replicate_max_runs", 4)?
            .set_default("replicate_observe_secs", 10)?
            .set_default("docker_host", "unix:///var/run/docker.sock")?
            .set_default("docker_gpus", "all")?
            .set_default("docker_max_runs", 1)?
            .set_default("docker_observe_secs", 5)?
            .set_default("aitoolkit_max_runs", 1)?
            .set_default("aitoolkit_gpu_ids", "0")?
            .set_default("aitoolkit_observe_secs", 10)?
            .set_default("allow_loopback_callbacks", false)?
            .set_default("job_timeout_secs", 2 * 3600)?
            .set_default("job_lease_secs", 120)?
            .set_default("engine_poll_ms", 1000)?
            .set_default("breaker_failures", 3)?
            .set_default("breaker_window_secs", 600)?
            .set_default("breaker_open_secs", 1800)?
            .set_default("breaker_probe_timeout_secs", 300)?
            .set_default("worker_retry_delay_ms", 2000)?
            .set_default("validation_similarity_threshold", 0.7)?
            .set_default("validation_auto_approve", false)?
            .set_default("debug_fail_uploads", 0)?
            .set_default("monthly_budget_usd", "200")?
            .set_default("budget_alert_percent", 75)?
            .set_default("storage_price_per_gb_month", "0.023")?
            .set_default("local_price_per_hour", "0")?
            .set_default("decode_budget_bytes", 192 * 1024 * 1024)?
            .set_default("decode_wait_secs", 30)?
            .set_default("http_header_timeout_secs", 30)?
            .set_default("http_body_timeout_secs", 30)?
            .set_default("http_idle_timeout_secs", 20)?
            .set_default("http_max_connections", 1024)?;

        let file = over
            .config_file
            .clone()
            .or_else(|| std::env::var_os("LORAFORGE_CONFIG").map(PathBuf::from));
        match file {
            Some(f) => {
                if !f.exists() {
                    bail!("config file {} does not exist", f.display());
                }
                b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
            }
            None if Path::new("loraforge.toml").exists() => {
                b = b.add_source(
                    config::File::with_name("loraforge.toml").format(config::FileFormat::Toml),
                );
            }
            None => {}
        }
        let mut env = config::Environment::with_prefix("LORAFORGE")
            .prefix_separator("_")
            .try_parsing(true)
            .list_separator(",");
        for k in LIST_KEYS {
            env = env.with_list_parse_key(k);
        }
        b = b.add_source(env);
        if let Some(d) = &over.data_dir {
            b = b.set_override("data_dir", d.to_string_lossy().to_string())?;
        }
        if let Some(bind) = &over.bind {
            b = b.set_override("bind", bind.clone())?;
        }
        let mut s: Settings = b
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("configuration has an invalid value (check loraforge.toml and LORAFORGE_* variables)")?;
        if s.local_model_roots.is_empty() {
            s.local_model_roots
                .push(absolute(&s.data_dir.join("models")));
        }
        s.allowed_base_models = s
            .allowed_base_models
            .iter()
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        s.cors_origins.retain(|o| !o.trim().is_empty());
        s.image_url_allowed_hosts.retain(|h| !h.trim().is_empty());
        s.jwt_audience.retain(|a| !a.trim().is_empty());
        s.audience_policy()?;
        for h in &s.image_url_allowed_hosts {
            loraforge_fetch::HostPattern::parse(h)
                .map_err(|e| anyhow::anyhow!("image_url_allowed_hosts: {e}"))?;
        }
        if s.lora_min_bytes > s.lora_max_bytes {
            bail!(
                "lora_min_bytes ({}) is larger than lora_max_bytes ({})",
                s.lora_min_bytes,
                s.lora_max_bytes
            );
        }
        if s.trainer_python
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            s.trainer_python = None;
        }
        if s.trainer_venv
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            s.trainer_venv = None;
        }
        if s.validation_scorer
            .as_ref()
            .is_some_and(|p| p.trim().is_empty())
        {
            s.validation_scorer = None;
        }
        if !(0.0..=1.0).contains(&s.validation_similarity_threshold) {
            bail!(
                "validation_similarity_threshold must be between 0 and 1, not {}",
                s.validation_similarity_threshold
            );
        }
        s.backends.retain(|b| !b.trim().is_empty());
        s.runpod_gpu_types.retain(|g| !g.trim().is_empty());
        backends::check(&s)?;
        costs::check(&s)?;
        if let Err(e) =
            loraforge_domain::MicroUsd::parse_dollars(&s.runpod_serverless_price_per_second)
        {
            bail!(
                "runpod_serverless_price_per_second must be decimal dollars per second like 0.00031: {e}"
            );
        }
        if !matches!(s.credits.as_str(), "on" | "off") {
            bail!("credits must be on or off, not {:?}", s.credits);
        }
        if !matches!(s.runpod_cloud_type.as_str(), "all" | "secure" | "community") {
            bail!(
                "runpod_cloud_type must be all, secure or community, not {:?}",
                s.runpod_cloud_type
            );
        }
        if s.replicate_webhook_secret
            .as_ref()
            .is_some_and(|w| w.expose_secret().trim().is_empty())
        {
            s.replicate_webhook_secret = None;
        }
        if let Some(w) = &s.replicate_webhook_secret {
            loraforge_server::webhook::WebhookKey::parse(w.expose_secret())
                .map_err(|e| anyhow::anyhow!("replicate_webhook_secret: {e}"))?;
        }
        if s.checkpoint_every_steps == Some(0) {
            bail!("checkpoint_every_steps must be at least 1");
        }
        if s.training_concurrency == 0 {
            bail!(
                "training_concurrency must be at least 1 (set engine_enabled = false to train nothing)"
            );
        }
        if s.job_lease_secs < 10 {
            bail!(
                "job_lease_secs must be at least 10 seconds (workers send a heartbeat every 10 s)"
            );
        }
        s.check_alerts()?;
        if !matches!(s.log_format.as_str(), "text" | "json") {
            bail!(
                "log_format must be `text` or `json`, not {:?}",
                s.log_format
            );
        }
        Ok(s)
    }

    /// The Replicate webhook signing key, when a secret is set (checked by [`Settings::load`]).
    pub fn replicate_webhook_key(&self) -> Option<loraforge_server::webhook::WebhookKey> {
        let secret = self.replicate_webhook_secret.as_ref()?;
        loraforge_server::webhook::WebhookKey::parse(secret.expose_secret()).ok()
    }

    /// Which audiences users' tokens may carry (`jwt_audience`, `jwt_allow_missing_audience`).
    pub fn audience_policy(&self) -> anyhow::Result<loraforge_server::auth::AudiencePolicy> {
        loraforge_server::auth::AudiencePolicy::new(
            &self.jwt_audience,
            self.jwt_allow_missing_audience,
        )
        .map_err(|e| anyhow::anyhow!("jwt_audience: {e}"))
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("loraforge.db").display()),
        }
    }

    /// This engine's lease name: `worker_id`, else `local-` and a hash of the data dir (stable
    /// across restarts, distinct for two services on one host).
    pub fn worker_id(&self) -> String {
        use sha2::{Digest, Sha256};
        self.worker_id
            .clone()
            .filter(|w| !w.trim().is_empty())
            .unwrap_or_else(|| {
                let dir = absolute(&self.data_dir);
                let hash = Sha256::digest(dir.to_string_lossy().as_bytes());
                format!("local-{}", &hex::encode(hash)[..12])
            })
    }

    /// The trainer venv's folder (absolute): `trainer_venv`, else `<data_dir>/trainer-venv`.
    pub fn trainer_venv(&self) -> PathBuf {
        absolute(
            self.trainer_venv
                .as_deref()
                .unwrap_or(&self.data_dir.join("trainer-venv")),
        )
    }

    pub fn public_url(&self) -> anyhow::Result<url::Url> {
        let raw = match &self.public_url {
            Some(u) => u.clone(),
            None => {
                let host = if self.bind.ip().is_unspecified() {
                    "127.0.0.1".to_owned()
                } else {
                    self.bind.ip().to_string()
                };
                let host = if self.bind.is_ipv6() && !self.bind.ip().is_unspecified() {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("http://{host}:{}", self.bind.port())
            }
        };
        url::Url::parse(&raw).with_context(|| format!("public_url {raw:?} is not a URL"))
    }

    /// The configured JWT secret, or the one kept in the data dir (generated on first use,
    /// written with 0600 permissions).
    pub fn jwt_secret(&self) -> anyhow::Result<SecretSlice<u8>> {
        if let Some(s) = &self.jwt_secret {
            if s.expose_secret().len() < 16 {
                bail!(
                    "LORAFORGE_JWT_SECRET is too short; use at least 16 characters (32 random bytes recommended)"
                );
            }
            return Ok(SecretSlice::from(s.expose_secret().as_bytes().to_vec()));
        }
        let path = self.data_dir.join("jwt-secret");
        if let Ok(existing) = std::fs::read_to_string(&path) {
            let trimmed = existing.trim();
            if trimmed.len() < 16 {
                bail!(
                    "{} is too short or empty; delete it to generate a new secret",
                    path.display()
                );
            }
            return Ok(SecretSlice::from(trimmed.as_bytes().to_vec()));
        }
        create_private_dir(&self.data_dir)?;
        let secret = hex::encode(rand::random::<[u8; 32]>());
        write_private(&path, secret.as_bytes())?;
        // Another process may have won the race to create it: read what is there.
        let stored = std::fs::read_to_string(&path)?;
        Ok(SecretSlice::from(stored.trim().as_bytes().to_vec()))
    }
}
