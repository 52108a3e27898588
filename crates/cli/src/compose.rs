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
use loraforge_domain::LoraId;
use loraforge_domain::{
    DatasetQuota, DatasetRetention, DatasetRules, ParamLimits, SystemClock, UsageLimits,
};
use loraforge_engine::backends::{LocalBackend, LocalBackendSettings};
use loraforge_engine::{
    AfterTraining, BudgetGate, Engine, EngineSettings, TrainingBackend, ValidationRules,
    WorkerTokens,
};
use loraforge_fetch::{FetchSettings, HostPattern};
use loraforge_server::settings::{ValidationSettings, WorkerApiSettings};
use loraforge_server::{AppState, HttpSettings, JwtKeys, ServerSettings};
use loraforge_storage::BlobStore;
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
        dataset_quota: DatasetQuota {
            datasets_per_day: s.datasets_per_day,
            bytes_per_day: s.dataset_bytes_per_day,
        },
        dataset_retention: DatasetRetention {
            unused_after: Duration::from_secs(s.unused_dataset_retention_secs),
            trained_images_after: s
                .trained_dataset_image_retention_secs
                .map(Duration::from_secs),
        },
        show_creator_emails: s.show_creator_emails,
        param_limits: ParamLimits {
            min_steps: s.min_steps,
            min_resolution: s.min_resolution,
            local_model_roots: s.local_model_roots.iter().map(|p| absolute(p)).collect(),
            allowed_base_models: s.allowed_base_models.clone(),
        },
        download_url_ttl: Duration::from_secs(s.download_url_ttl_secs.max(1)),
        library_cache_ttl: Duration::from_millis(s.library_cache_ms),
        library_index_lag: s
            .library_index
            .then(|| Duration::from_millis(s.library_index_lag_ms)),
        cors_origins: s.cors_origins.clone(),
        url_intake: fetch_settings(s),
        worker: WorkerApiSettings {
            lease: Duration::from_secs(s.job_lease_secs),
            url_ttl: job_url_ttl(s),
            checkpoint_every: s.checkpoint_every_steps,
            // The dataset zip link in each job points here (Replicate downloads it).
            public_url: s.public_url().ok(),
            ..WorkerApiSettings::default()
        },
        validation: ValidationSettings {
            similarity_threshold: s.validation_similarity_threshold,
            auto_approve: s.validation_auto_approve,
            scorer: s.validation_scorer.clone(),
        },
        lora_rules: lora_rules(s),
        debug_fail_uploads: s.debug_fail_uploads,
        decode_budget_bytes: s.decode_budget_bytes,
        decode_wait: Duration::from_secs(s.decode_wait_secs),
        http: HttpSettings {
            header_timeout: Duration::from_secs(s.http_header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(s.http_body_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(s.http_idle_timeout_secs.max(1)),
            max_connections: s.http_max_connections.max(1),
        },
        replicate_webhook_key: s.replicate_webhook_key(),
        costs: s.cost_settings(),
        credits: credit_settings(s),
        client_webhooks: loraforge_server::ClientWebhookSettings {
            allow_private_addresses: s.webhook_allow_private_addresses,
            timeout: Duration::from_secs(s.webhook_timeout_secs.max(1)),
            ..loraforge_server::ClientWebhookSettings::default()
        },
        // Checked by `Settings::load`.
        monitors: s.monitor_settings().unwrap_or_default(),
        finish_mails: s.mailer().ok().flatten().is_some(),
        moderation: loraforge_server::settings::ModerationSettings {
            reports_per_minute: s.reports_per_minute,
            alert_after_reports: s.report_alert_threshold,
        },
        ui: ui_settings(s),
        ..ServerSettings::default()
    }
}

/// The local admin of the one-click sign-in (`/api/v1/auth/local`): one fixed id, so a person's
/// LoRAs stay theirs across restarts; tokens for it are signed with this data dir's secret only.
pub const LOCAL_ADMIN: uuid::Uuid = uuid::Uuid::from_u128(0x00000000_0000_4000_8000_10ca1ad00001);

/// One-click local sign-in only on a loopback bind with a secret the service generated itself
/// (a configured secret means someone else mints tokens: they decide who is admin); and the
/// origins signed links point at (local files' public URL, an S3 endpoint) for the UI's CSP.
fn ui_settings(s: &Settings) -> loraforge_server::UiSettings {
    let local = s.bind.ip().is_loopback() && s.jwt_secret.is_none();
    let origin = |u: &str| {
        url::Url::parse(u)
            .ok()
            .map(|u| u.origin().ascii_serialization())
            .filter(|o| o != "null")
    };
    let asset_origins = [
        s.public_url().ok().map(|u| u.to_string()),
        s.s3_endpoint.clone(),
    ]
    .iter()
    .flatten()
    .map(String::as_str)
    .filter_map(origin)
    .collect();
    loraforge_server::UiSettings {
        local_sign_in: local.then(|| loraforge_server::LocalSignIn {
            user: loraforge_domain::UserId(LOCAL_ADMIN),
            email: "admin@localhost".to_owned(),
            ttl: Duration::from_secs(12 * 3600),
        }),
        asset_origins,
    }
}

/// Credits on or off, and each backend's configured price per hour for quotes (settings are
/// checked at load, so a price that does not parse is left out rather than failing here). RunPod
/// pods have no configured price (each pod's comes from the API at launch): their quotes use the
/// prices their runs recorded. `local` is priced only when `local_price_per_hour` is above 0.
fn credit_settings(s: &Settings) -> loraforge_server::settings::CreditSettings {
    let per_hour = |p: &str| loraforge_domain::MicroUsd::parse_dollars(p).ok();
    let per_second =
        |p: &str| per_hour(p).map(|m| loraforge_domain::MicroUsd(m.0.saturating_mul(3600)));
    let prices = [
        (
            "docker",
            s.docker_price_per_hour.as_deref().and_then(per_hour),
        ),
        (
            "aitoolkit",
            s.aitoolkit_price_per_hour.as_deref().and_then(per_hour),
        ),
        (
            "runpod-serverless",
            per_second(&s.runpod_serverless_price_per_second),
        ),
        ("replicate", per_second(&s.replicate_price_per_second)),
        ("local", s.local_price().ok().flatten()),
    ];
    loraforge_server::settings::CreditSettings {
        enabled: s.credits == "on",
        prices_per_hour: prices
            .into_iter()
            .filter_map(|(name, p)| Some((name.to_owned(), p?)))
            .collect(),
    }
}

/// Signed links in a job outlive the job timeout by an hour (slow uploads at the end), within
/// S3's 7-day cap on presigned URLs.
fn job_url_ttl(s: &Settings) -> Duration {
    Duration::from_secs(s.job_timeout_secs.saturating_add(3600).min(7 * 86_400))
}

/// Per-attempt worker tokens signed with the service's secret.
#[derive(Debug)]
struct JwtWorkerTokens {
    keys: JwtKeys,
    ttl: Duration,
}

impl WorkerTokens for JwtWorkerTokens {
    fn issue(&self, lora: LoraId, attempt: u32, worker_id: &str) -> Result<String, String> {
        self.keys
            .issue_worker(lora, attempt, worker_id, self.ttl, chrono::Utc::now())
            .map_err(|e| e.to_string())
    }

    fn issue_sample(
        &self,
        batch: loraforge_domain::SampleBatchId,
        attempt: u32,
    ) -> Result<String, String> {
        self.keys
            .issue_sample_worker(batch, attempt, self.ttl, chrono::Utc::now())
            .map_err(|e| e.to_string())
    }
}

/// The service's own credentials among environment variable names: a worker holds only its job
/// token and signed links, so it inherits none of them.
fn secret_variables(names: impl Iterator<Item = String>) -> Vec<String> {
    names
        .filter(|k| {
            let k = k.to_ascii_uppercase();
            (k.starts_with("LORAFORGE_")
                && (k.contains("SECRET")
                    || k.contains("DATABASE_URL")
                    || k.contains("ACCESS_KEY")
                    || k.contains("TOKEN")))
                || k.starts_with("AWS_")
                || k == "DATABASE_URL"
                || k == "PGPASSWORD"
        })
        .collect()
}

/// Intra-op threads for each trainer when several run at once on this host: the cores split
/// between the slots, unless the operator chose (`LORAFORGE_TORCH_THREADS`). Without this every
/// CPU trainer's OpenMP pool spins on all the cores and they wait on each other: measured on 2
/// cores, two 2-thread trainers took 5x longer per step than two 1-thread ones
/// (`bench/concurrent_trainers.sh`).
fn torch_threads(cores: usize, slots: usize, operator_set: bool) -> Option<usize> {
    (!operator_set && slots > 1).then(|| (cores / slots).max(1))
}

/// The job engine of `serve`: the local backend running `loraforge worker` (this very binary)
/// per job, calling back to `callback_url`; the after-training steps read `store`.
pub fn engine(
    s: &Settings,
    repo: Arc<dyn Repository>,
    store: Arc<dyn BlobStore>,
    callback_url: &url::Url,
) -> anyhow::Result<Engine> {
    let exe = std::env::current_exe().context("finding this program to run workers with")?;
    let work_dir = absolute(&s.data_dir.join("jobs"));
    let mut local = LocalBackendSettings::new(exe, &work_dir);
    let mut args = vec![
        "worker".to_owned(),
        "--data-dir".to_owned(),
        absolute(&s.data_dir).display().to_string(),
    ];
    if let Ok(config) = std::env::var("LORAFORGE_CONFIG") {
        args.extend(["--config".to_owned(), config]);
    }
    // The server, the LoRA and the token come in the worker's environment (as on any host).
    args.extend(["--out", "{out}"].map(str::to_owned));
    local.args_template = args;
    local.max_concurrent = s.training_concurrency;
    local.price_per_hour = s.local_price()?;
    // The worker stops the trainer with SIGTERM; the trainer finishes its step and checkpoints.
    local.kill_grace = Duration::from_secs(20);
    // A local worker outlives a crash of `serve` (its own process group, talking to the service
    // over HTTP like any remote worker): the restarted service adopts and watches it, so a crash
    // costs no training. A worker whose service never comes back stops itself once it has been
    // unreachable for too long (`loraforge_worker::UNREACHABLE_LIMIT`).
    local.env = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if let Some(n) = torch_threads(
        cores,
        local.max_concurrent,
        std::env::var_os("LORAFORGE_TORCH_THREADS").is_some(),
    ) {
        local
            .env
            .push(("LORAFORGE_TORCH_THREADS".to_owned(), n.to_string()));
    }
    local.env_remove = secret_variables(std::env::vars().map(|(k, _)| k));
    let settings = EngineSettings {
        worker_id: s.worker_id(),
        poll_interval: Duration::from_millis(s.engine_poll_ms.max(10)),
        lease: Duration::from_secs(s.job_lease_secs),
        job_timeout: Duration::from_secs(s.job_timeout_secs.max(1)),
        max_active_per_user: s.max_concurrent_jobs,
        server_url: callback_url.as_str().trim_end_matches('/').to_owned(),
        breaker: s.breaker_rules(),
        ..EngineSettings::default()
    };
    let after = AfterTraining::new(
        store,
        lora_rules(s),
        ValidationRules {
            similarity_threshold: s.validation_similarity_threshold,
            auto_approve: s.validation_auto_approve,
        },
    );
    let tokens: Arc<dyn WorkerTokens> = Arc::new(JwtWorkerTokens {
        keys: jwt_keys(s)?,
        ttl: job_url_ttl(s),
    });
    // The aitoolkit backend acts for its attempts from inside this process, so it calls the
    // control plane where the local workers do.
    let in_process_url = settings.server_url.clone();
    let mut backends: Vec<Arc<dyn TrainingBackend>> = Vec::new();
    let mut settings = settings;
    for name in &s.backends {
        match name.as_str() {
            "local" => backends.push(Arc::new(LocalBackend::new(local.clone()))),
            "runpod" => {
                settings.server_url = remote_server_url(s, "runpod")?;
                backends.push(Arc::new(runpod_backend(s)?));
            }
            "runpod-serverless" => {
                settings.server_url = remote_server_url(s, "runpod-serverless")?;
                backends.push(Arc::new(runpod_serverless_backend(s)?));
            }
            "replicate" => {
                settings.server_url = remote_server_url(s, "replicate")?;
                backends.push(Arc::new(crate::compose_replicate::replicate_backend(
                    s,
                    &settings.server_url,
                    tokens.clone(),
                )?));
            }
            "docker" => {
                // A container has its own network namespace: loopback there is not this host.
                settings.server_url = remote_server_url(s, "docker")?;
                backends.push(Arc::new(docker_backend(s)?));
            }
            "aitoolkit" => backends.push(Arc::new(aitoolkit_backend(
                s,
                &in_process_url,
                Arc::clone(&tokens),
            )?)),
            other => bail!("unknown backend {other:?}"),
        }
    }
    if backends.is_empty() {
        bail!(
            "no backend is configured (LORAFORGE_BACKENDS); use {}",
            crate::settings::backend_choices()
        );
    }
    // The system budget: asked before every launch, refreshed by every tick.
    let budget = Arc::new(BudgetGate::new(repo.clone(), s.budget_settings()));
    Ok(
        Engine::new(repo, Arc::new(SystemClock), backends, settings, after)
            .with_worker_tokens(tokens)
            .with_gate(budget),
    )
}

/// The control plane's URL for workers on another machine (a pod, a serverless worker): the
/// public URL, never loopback (unless allowed for tests).
fn remote_server_url(s: &Settings, backend: &str) -> anyhow::Result<String> {
    let public = s.public_url()?;
    if is_loopback(&public) && !s.allow_loopback_callbacks {
        bail!(
            "the {backend} backend needs a public_url its workers can reach (LORAFORGE_PUBLIC_URL); {public} is \
             a loopback address (set LORAFORGE_ALLOW_LOOPBACK_CALLBACKS=true only for tests)"
        );
    }
    Ok(public.as_str().trim_end_matches('/').to_owned())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => true,
    }
}

/// The ai-toolkit backend from the `aitoolkit_*` settings. `server` is the control plane as
/// this process reaches it; `tokens` issue an attempt's token again after a restart.
fn aitoolkit_backend(
    s: &Settings,
    server: &str,
    tokens: Arc<dyn WorkerTokens>,
) -> anyhow::Result<loraforge_aitoolkit::AiToolkitBackend> {
    use loraforge_aitoolkit::{
        AiToolkitBackend, AiToolkitBackendSettings, AiToolkitClient, ClientSettings, Reissue,
    };
    use loraforge_domain::MicroUsd;
    let url = s
        .aitoolkit_url
        .as_deref()
        .context("the aitoolkit backend needs LORAFORGE_AITOOLKIT_URL (ai-toolkit's web UI)")?;
    let url =
        url::Url::parse(url).with_context(|| format!("aitoolkit_url {url:?} is not a URL"))?;
    let client = AiToolkitClient::new(ClientSettings::new(url, s.aitoolkit_token.clone()))
        .map_err(|e| anyhow::anyhow!("the ai-toolkit client: {e}"))?;
    let mut settings = AiToolkitBackendSettings::new(absolute(&s.data_dir.join("aitoolkit")));
    settings.max_runs = s.aitoolkit_max_runs.max(1);
    settings.gpu_ids = s.aitoolkit_gpu_ids.clone();
    settings.observe_every = Duration::from_secs(s.aitoolkit_observe_secs.max(1));
    settings.max_model_bytes = s.lora_max_bytes.saturating_mul(2);
    settings.price_per_hour = s
        .aitoolkit_price_per_hour
        .as_deref()
        .map(MicroUsd::parse_dollars)
        .transpose()
        .map_err(|e| anyhow::anyhow!("aitoolkit_price_per_hour: {e}"))?;
    settings.reissue = Some(Reissue {
        server: server.to_owned(),
        tokens,
        worker_id: s.worker_id(),
    });
    Ok(AiToolkitBackend::new(client, settings))
}

/// The RunPod pods backend from the `runpod_*` settings.
fn runpod_backend(s: &Settings) -> anyhow::Result<loraforge_runpod::PodsBackend> {
    use loraforge_runpod::{CloudType, GraphqlClient, GraphqlSettings, PodsBackend, PodsSettings};
    let key = s
        .runpod_api_key
        .clone()
        .context("the runpod backend needs LORAFORGE_RUNPOD_API_KEY")?;
    let image = s
        .runpod_image
        .clone()
        .context("the runpod backend needs LORAFORGE_RUNPOD_IMAGE (the worker image)")?;
    if s.runpod_gpu_types.is_empty() {
        bail!("the runpod backend needs at least one GPU type in LORAFORGE_RUNPOD_GPU_TYPES");
    }
    let mut graphql = GraphqlSettings::new(key);
    if let Some(u) = &s.runpod_graphql_url {
        graphql.url =
            url::Url::parse(u).with_context(|| format!("runpod_graphql_url {u:?} is not a URL"))?;
    }
    let mut pods = PodsSettings::new(image, s.runpod_gpu_types.clone());
    pods.cloud_type = match s.runpod_cloud_type.as_str() {
        "secure" => CloudType::Secure,
        "community" => CloudType::Community,
        _ => CloudType::All,
    };
    pods.container_disk_gb = Some(s.runpod_container_disk_gb);
    pods.volume_gb = s.runpod_volume_gb;
    pods.network_volume_id = s.runpod_network_volume_id.clone();
    pods.max_pods = s.runpod_max_pods.max(1);
    pods.observe_every = Duration::from_secs(s.runpod_observe_secs.max(1));
    // Base weights from the Hugging Face hub may need a token; the pod gets it, nothing else.
    if let Ok(token) = std::env::var("HF_TOKEN") {
        pods.env.push(("HF_TOKEN".to_owned(), token));
    }
    Ok(PodsBackend::new(GraphqlClient::new(graphql), pods))
}

/// The Docker backend from the `docker_*` settings: containers of `docker_image` on
/// `docker_host`.
fn docker_backend(s: &Settings) -> anyhow::Result<loraforge_docker::DockerBackend> {
    use loraforge_docker::{DockerBackend, DockerSettings, Gpus};
    let image = s
        .docker_image
        .clone()
        .filter(|i| !i.trim().is_empty())
        .context("the docker backend needs LORAFORGE_DOCKER_IMAGE (the worker image)")?;
    let mut docker = DockerSettings::new(image);
    docker.gpus = Gpus::parse(&s.docker_gpus).map_err(|e| anyhow::anyhow!(e))?;
    docker.memory_mb = s.docker_memory_mb.filter(|mb| *mb > 0);
    docker.nano_cpus = s
        .docker_cpus
        .as_deref()
        .map(loraforge_docker::parse_cpus)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    docker.network = s.docker_network.clone().filter(|n| !n.trim().is_empty());
    docker.max_runs = s.docker_max_runs.max(1);
    docker.observe_every = Duration::from_secs(s.docker_observe_secs.max(1));
    docker.price_per_hour = s
        .docker_price_per_hour
        .as_deref()
        .map(loraforge_domain::MicroUsd::parse_dollars)
        .transpose()
        .map_err(|e| anyhow::anyhow!("docker_price_per_hour: {e}"))?;
    // Base weights from the Hugging Face hub may need a token; the container gets it, nothing
    // else of this process's environment.
    if let Ok(token) = std::env::var("HF_TOKEN") {
        docker.env.push(("HF_TOKEN".to_owned(), token));
    }
    // The client's own limit is the longest call's (a pull); each call has its own below it.
    let client = loraforge_docker::connect(&s.docker_host, docker.pull_timeout)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(DockerBackend::new(client, docker))
}

/// The RunPod Serverless backend from the `runpod_*` settings: jobs on `runpod_endpoint_id`.
fn runpod_serverless_backend(s: &Settings) -> anyhow::Result<loraforge_runpod::ServerlessBackend> {
    use loraforge_domain::MicroUsd;
    use loraforge_runpod::{
        ServerlessBackend, ServerlessBackendSettings, ServerlessClient, ServerlessSettings,
    };
    let key = s
        .runpod_api_key
        .clone()
        .context("the runpod-serverless backend needs LORAFORGE_RUNPOD_API_KEY")?;
    let endpoint = s
        .runpod_endpoint_id
        .clone()
        .filter(|e| !e.trim().is_empty())
        .context("the runpod-serverless backend needs LORAFORGE_RUNPOD_ENDPOINT_ID (the Serverless endpoint)")?;
    let mut client = ServerlessSettings::new(endpoint, key);
    if let Some(u) = &s.runpod_serverless_url {
        client.base_url = url::Url::parse(u)
            .with_context(|| format!("runpod_serverless_url {u:?} is not a URL"))?;
    }
    let price = MicroUsd::parse_dollars(&s.runpod_serverless_price_per_second)
        .map_err(|e| anyhow::anyhow!("runpod_serverless_price_per_second: {e}"))?;
    let mut jobs = ServerlessBackendSettings {
        max_jobs: s.runpod_serverless_max_jobs.max(1),
        price_per_second: Some(price),
        // The engine's own timeout acts first; RunPod's stops a handler the engine lost.
        execution_timeout: Duration::from_secs(s.job_timeout_secs.saturating_add(600)),
        ..ServerlessBackendSettings::default()
    };
    if let Ok(token) = std::env::var("HF_TOKEN") {
        jobs.env.push(("HF_TOKEN".to_owned(), token));
    }
    Ok(ServerlessBackend::new(ServerlessClient::new(client), jobs))
}

/// Image URL downloads. Host patterns were validated when the settings were loaded.
pub fn fetch_settings(s: &Settings) -> FetchSettings {
    FetchSettings {
        allowed_hosts: s
            .image_url_allowed_hosts
            .iter()
            .filter_map(|h| HostPattern::parse(h).ok())
            .collect(),
        allow_private_addresses: s.image_url_allow_private_addresses,
        timeout: Duration::from_secs(s.download_timeout_secs.max(1)),
        cache_dir: (s.download_cache_ttl_secs > 0)
            .then(|| absolute(&s.data_dir.join("cache").join("downloads"))),
        cache_ttl: Duration::from_secs(s.download_cache_ttl_secs),
        ..FetchSettings::default()
    }
}

/// The LoRA file rules of `inspect` and of the upload check before publishing.
pub fn lora_rules(s: &Settings) -> LoraRules {
    LoraRules {
        min_bytes: s.lora_min_bytes,
        max_bytes: s.lora_max_bytes,
        scan_values: true,
    }
}

/// The service's token keys: its secret and the operator's audience policy.
pub fn jwt_keys(s: &Settings) -> anyhow::Result<JwtKeys> {
    Ok(JwtKeys::new(&s.jwt_secret()?).with_audience(s.audience_policy()?))
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
    crate::settings::create_private_dir(&s.data_dir)?;
    let db_url = s.database_url();
    loraforge_db::connect(
        &db_url,
        &ConnectOptions {
            max_connections: s.database_max_connections,
        },
    )
    .await
    .with_context(|| format!("opening database {}", redact_url(&db_url)))
}

/// Everything `serve` needs, connected and migrated.
/// The server's state over an already opened repository (shared with the job engine).
pub fn app_state_with(s: &Settings, repo: Arc<dyn Repository>) -> anyhow::Result<AppState> {
    let jwt_secret = s.jwt_secret()?;
    let store =
        loraforge_storage::open(&storage_settings(s, &jwt_secret)?).context("opening storage")?;
    Ok(AppState::new(
        repo,
        store,
        Arc::new(SystemClock),
        JwtKeys::new(&jwt_secret).with_audience(s.audience_policy()?),
        server_settings(s),
    ))
}

#[cfg(test)]
mod tests {
    use super::{secret_variables, server_settings, torch_threads};
    use crate::settings::{Overrides, Settings};

    #[test]
    fn the_moderation_settings_reach_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loraforge.toml");
        std::fs::write(
            &file,
            "reports_per_minute = 4\nreport_alert_threshold = 0\n",
        )
        .unwrap();
        let s = Settings::load(&Overrides {
            config_file: Some(file),
            data_dir: Some(dir.path().to_owned()),
            ..Overrides::default()
        })
        .unwrap();
        let m = server_settings(&s).moderation;
        assert_eq!((m.reports_per_minute, m.alert_after_reports), (4, 0));
    }

    #[test]
    fn concurrent_trainers_split_the_cores_unless_the_operator_chose() {
        assert_eq!(
            torch_threads(16, 1, false),
            None,
            "one slot: torch's own default (all cores)"
        );
        assert_eq!(torch_threads(16, 4, false), Some(4));
        assert_eq!(torch_threads(2, 3, false), Some(1), "never zero");
        assert_eq!(torch_threads(16, 4, true), None);
    }

    #[test]
    fn workers_inherit_none_of_the_services_secrets() {
        let names = [
            "LORAFORGE_JWT_SECRET",
            "LORAFORGE_DATABASE_URL",
            "LORAFORGE_S3_SECRET_ACCESS_KEY",
            "LORAFORGE_S3_ACCESS_KEY_ID",
            "LORAFORGE_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "PGPASSWORD",
            "LORAFORGE_DATA_DIR",
            "LORAFORGE_TRAINER_PYTHON",
            "HF_HUB_OFFLINE",
            "PATH",
        ];
        let removed = secret_variables(names.iter().map(|s| (*s).to_owned()));
        assert_eq!(removed, &names[..8]);
    }
}
