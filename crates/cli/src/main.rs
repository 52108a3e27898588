//! `loraforge`: the one binary. `serve` runs the service; the other commands are its tools.

mod commands;
mod compose;
mod compose_replicate;
mod readiness;
mod settings;
mod trainer_env;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use loraforge_domain::UserId;
use loraforge_server::Application;

use settings::{Overrides, Settings};

/// loraforge turns a handful of character images and a name into a validated LoRA, trained on a
/// GPU and kept in a shared public library.
///
/// Settings come from built-in defaults, then `loraforge.toml` (or --config), then LORAFORGE_*
/// environment variables, then flags. Run `loraforge config` to see the result.
#[derive(Debug, Parser)]
#[command(name = "loraforge", version, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML). Default: ./loraforge.toml when present, or $LORAFORGE_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Folder for the database, local files and the generated secret [env: LORAFORGE_DATA_DIR]
    /// [default: ./data]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API (SQLite and local files in --data-dir unless configured otherwise).
    Serve {
        /// Address to listen on [env: LORAFORGE_BIND] [default: 127.0.0.1:8080]
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
    },
    /// Run one training attempt for a control plane: fetch the job, download its images, run the
    /// trainer, relay progress, upload the outputs, report the result. `serve` starts one per job
    /// on this host; a GPU container or pod runs the same command. The per-attempt token comes
    /// in LORAFORGE_WORKER_TOKEN. Exit status: the trainer's (0 done, 2 bad input, 3 diverged,
    /// 4 out of memory, 5 validation failed, 10 stopped) or 11 upload failed (files kept),
    /// 12 the job is no longer active, 13 the control plane is unreachable.
    ///
    /// Given no flags (as in the worker image), everything comes from the environment:
    /// LORAFORGE_SERVER, LORAFORGE_LORA_ID, LORAFORGE_WORKER_TOKEN and optionally
    /// LORAFORGE_WORKER_SCRATCH and LORAFORGE_HF_HOME.
    Worker {
        /// The control plane's base URL as this host reaches it.
        #[arg(long, env = "LORAFORGE_SERVER", value_name = "URL")]
        server: url::Url,
        /// The LoRA (job) id.
        #[arg(long, env = "LORAFORGE_LORA_ID", value_name = "ID")]
        lora: String,
        /// The job's folder on this host (the same for every attempt on this host, so a retry
        /// resumes) [default: a folder for the job under the system's temporary directory].
        #[arg(long, env = "LORAFORGE_WORKER_SCRATCH", value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print an API token signed with this server's secret (for local use, scripts and tests).
    Token {
        /// The user's UUID (the token's `sub`).
        #[arg(long, value_name = "UUID")]
        user: UserId,
        /// Email shown as the creator of the user's LoRAs.
        #[arg(long)]
        email: Option<String>,
        /// Make the token an admin token (`role: admin`).
        #[arg(long)]
        admin: bool,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Print the effective configuration, with secrets hidden.
    Config,
    /// Check training images as the server would: a table of per-image results and a verdict.
    /// Exit status: 0 accepted, 1 rejected, 2 nothing to check. Rules come from the
    /// configuration (dataset_min_images, image_min_bytes, image_min_side, …).
    CheckDataset {
        /// A folder (its .jpg, .jpeg, .png and .webp files) or image files.
        #[arg(value_name = "DIR|FILES", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check a trained LoRA file as the server does before publishing it: header, key
    /// convention, rank, alpha, dtypes, size window (lora_min_bytes/lora_max_bytes), metadata
    /// and a NaN/Inf scan of every value. Exit status: 0 passes, 1 rejected or malformed,
    /// 2 cannot be opened.
    Inspect {
        /// The .safetensors file.
        #[arg(value_name = "FILE.safetensors")]
        file: PathBuf,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Build the trainer's Python environment: a venv at trainer_venv (default
    /// <data-dir>/trainer-venv) with exactly the packages of the requirements.lock built into
    /// loraforge (torch with its CUDA libraries: about 3 GB to download, 6 GB on disk).
    ///
    /// Runs once: the venv is built in <venv>.partial and renamed into place after a stamp (a hash
    /// of the lock and the Python version) is written, so an interrupted setup is simply redone
    /// and a later run with a matching stamp does nothing. The trainer's own sources are not
    /// installed: loraforge writes the copy built into it under <data-dir>/trainer/ and puts that
    /// on PYTHONPATH. With LORAFORGE_TRAINER_PYTHON set nothing is built; that interpreter is
    /// checked instead.
    SetupTrainer {
        /// The CPython (3.11 or newer) that creates the venv.
        #[arg(long, value_name = "PYTHON", default_value = "python3")]
        python: String,
        /// Rebuild even when the venv is up to date.
        #[arg(long)]
        force: bool,
        /// Install this requirements file instead of the built-in lock (for tests and experiments).
        #[arg(long, value_name = "FILE", hide = true)]
        requirements: Option<PathBuf>,
    },
    /// Check whether this host can run loraforge and train: the trainer's Python environment
    /// (imports loraforge_trainer, torch, diffusers, peft, transformers, safetensors), a GPU, the
    /// storage and the database. One line per check (ok, warn or FAIL) with what to do.
    /// Exit status: 0 when the trainer, storage and database are usable (no GPU is a warning:
    /// training then runs on the CPU, slowly), 1 otherwise.
    Doctor {
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Train a LoRA on a running loraforge service: checks the images in DIR locally (a bad
    /// dataset fails before anything is uploaded), uploads them, creates the LoRA and prints its
    /// id and status. With --follow, shows its progress until it completes (then prints the
    /// download link; exit 0), fails or is cancelled (exit 1); Ctrl-C stops following only.
    /// Exit status: 0 created (or completed), 1 refused or failed, 2 a usage error.
    Train {
        /// Folder with the training images (.jpg, .jpeg, .png, .webp) and optional captions
        /// (photo1.txt for photo1.jpg).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The LoRA's name, unique among your LoRAs.
        #[arg(long)]
        name: String,
        /// A description shown in the library.
        #[arg(long)]
        description: Option<String>,
        /// Trigger word(s) for the character (repeat for several).
        #[arg(long = "trigger", value_name = "WORD")]
        triggers: Vec<String>,
        /// Base model: a Hugging Face id or a folder under the server's local_model_roots
        /// [default: the server's, SDXL base 1.0].
        #[arg(long, value_name = "MODEL")]
        base_model: Option<String>,
        /// Training steps [default: the server's, 1500].
        #[arg(long)]
        steps: Option<u32>,
        /// Training resolution, a multiple of 64 [default: the server's, 1024].
        #[arg(long)]
        resolution: Option<u32>,
        /// Show the training's progress until it ends.
        #[arg(long)]
        follow: bool,
        /// The service's base URL.
        #[arg(
            long,
            env = "LORAFORGE_SERVER",
            default_value = "http://127.0.0.1:8080",
            value_name = "URL"
        )]
        server: String,
        /// API token (prefer the environment variable: arguments show in `ps`). For a local
        /// server: `loraforge token --user <uuid>`.
        #[arg(
            long,
            env = "LORAFORGE_TOKEN",
            hide_env_values = true,
            value_name = "JWT"
        )]
        token: Option<String>,
    },
    /// Fill the configured database with a synthetic library, for benchmarks and demos.
    /// Deterministic for a given --seed; prints a word that matches a few hundred LoRAs.
    BenchSeed {
        /// How many LoRAs to insert.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// How many owners to spread them over.
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also give every finished LoRA one ended run and this many `training` LoRAs an open
        /// (live) run; 0 seeds no runs.
        #[arg(long, default_value_t = 0)]
        live_runs: u32,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 30m, 1h or 7d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit {unit:?}; use s, m, h or d")),
    };
    if secs == 0 {
        return Err("the lifetime must be more than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

/// stderr for log lines, ignoring write errors: a worker whose `serve` was killed writes into a
/// closed pipe, and a log line must never panic a process (tracing's own fallback would).
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("LORAFORGE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    settings::restrict_umask();
    let cli = Cli::parse();
    let bind = match &cli.command {
        Command::Serve { bind } => bind.clone(),
        _ => None,
    };
    let over = Overrides {
        config_file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        bind,
    };
    let settings = Settings::load(&over)?;
    match cli.command {
        Command::Serve { .. } => serve(settings).await,
        Command::Worker { server, lora, out } => {
            init_logging(&settings.log_format);
            let out = out
                .unwrap_or_else(|| std::env::temp_dir().join(format!("loraforge-worker-{lora}")));
            std::process::exit(commands::worker::run(&settings, server, lora, out).await)
        }
        Command::Token {
            user,
            email,
            admin,
            ttl,
        } => {
            let keys = compose::jwt_keys(&settings)?;
            let token = keys
                .issue(user, email, admin, ttl, chrono::Utc::now())
                .context("signing the token")?;
            println!("{token}");
            Ok(())
        }
        Command::Config => {
            println!("{}", settings.describe()?);
            Ok(())
        }
        Command::CheckDataset { paths } => {
            let rules = compose::server_settings(&settings).dataset_rules;
            std::process::exit(commands::check_dataset::run(&paths, &rules))
        }
        Command::Inspect { file, json } => std::process::exit(commands::inspect::run(
            &file,
            json,
            &compose::lora_rules(&settings),
        )),
        Command::SetupTrainer {
            python,
            force,
            requirements,
        } => {
            let opts = commands::setup_trainer::Options {
                python,
                force,
                requirements,
            };
            std::process::exit(commands::setup_trainer::run(&settings, &opts).await?)
        }
        Command::Doctor { json } => {
            std::process::exit(commands::doctor::run(&settings, json).await)
        }
        Command::Train {
            dir,
            name,
            description,
            triggers,
            base_model,
            steps,
            resolution,
            follow,
            server,
            token,
        } => {
            let rules = compose::server_settings(&settings).dataset_rules;
            let args = commands::train::TrainArgs {
                dir,
                name,
                description,
                triggers,
                base_model,
                steps,
                resolution,
                follow,
                server,
                token,
            };
            std::process::exit(commands::train::run(&args, &rules).await)
        }
        Command::BenchSeed {
            count,
            users,
            seed,
            live_runs,
        } => {
            let repo = compose::repository(&settings).await?;
            let started = std::time::Instant::now();
            let seeded =
                loraforge_db::seed::seed_library(repo.as_ref(), count, users, seed).await?;
            eprintln!(
                "seeded {} LoRAs over {} users in {:.1}s",
                seeded.loras,
                seeded.users.len(),
                started.elapsed().as_secs_f64()
            );
            if live_runs > 0 {
                let runs = repo.seed_runs(live_runs).await?;
                eprintln!("seeded {} ended and {} live runs", runs.ended, runs.live);
            }
            println!("{}", seeded.vocabulary[0]);
            Ok(())
        }
    }
}

async fn serve(mut settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings.log_format);
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| {
            format!(
                "binding {} (is another server running there? set --bind)",
                settings.bind
            )
        })?;
    let addr = listener.local_addr()?;
    // With port 0 (or an unspecified address) the links must name the port actually bound.
    let loopback = url::Url::parse(&format!(
        "http://{}",
        std::net::SocketAddr::new(
            if addr.ip().is_unspecified() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                addr.ip()
            },
            addr.port()
        )
    ))?;
    if settings.public_url.is_none() {
        settings.public_url = Some(loopback.to_string());
    }
    let repo = compose::repository(&settings).await?;
    loraforge_db::AlertStore::set_alert_cooldown(repo.as_ref(), settings.alert_cooldown()?);
    let alert_channels = settings.alert_channels()?;
    let alert_repo = repo.clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut state =
        compose::app_state_with(&settings, repo.clone())?.with_engine_wake(wake.clone());
    if settings.metrics_enabled {
        // The one recorder of this process: every part records through the `metrics` facade.
        let handle =
            loraforge_server::metrics::install().context("installing the metrics recorder")?;
        state = state.with_metrics(loraforge_server::metrics::MetricsEndpoint::new(
            handle,
            settings.metrics_token.clone(),
        ));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let engine = if settings.engine_enabled {
        let callback = match &settings.worker_callback_url {
            Some(u) => url::Url::parse(u)
                .with_context(|| format!("worker_callback_url {u:?} is not a URL"))?,
            None => loopback.clone(),
        };
        let gate = Arc::new(readiness::TrainerGate::new(
            settings.trainer_python.clone(),
            settings.trainer_venv(),
        ));
        let health = Arc::new(loraforge_engine::EngineHealth::new());
        let engine = compose::engine(&settings, repo, state.store_handle(), &callback)?
            .with_gate(gate.clone())
            .with_health(health.clone());
        let report = readiness::EngineReport {
            health: health.clone(),
            gate,
            backends: settings.backends.clone(),
            stale_after: (engine.settings().poll_interval * 10).max(Duration::from_secs(120)),
            clock: Arc::new(loraforge_domain::SystemClock),
        };
        if let Some(why) = loraforge_server::state::EngineProbe::status(&report).cannot_train {
            tracing::warn!(reason = %why,
                "no backend can train: LoRAs will wait queued (saying why) until one can; /readyz reports it");
        }
        let engine = Arc::new(engine);
        state = state
            .with_engine_probe(Arc::new(report))
            .with_engine_nudge(Arc::new(readiness::EngineNudger(engine.clone())))
            .with_backends(
                engine
                    .backends()
                    .iter()
                    .map(|b| loraforge_server::state::BackendInfo {
                        name: b.name().to_owned(),
                        max_runs: b.max_runs(),
                        shared: b.scope() == loraforge_engine::Scope::Shared,
                    })
                    .collect(),
                engine.settings().breaker,
            );
        tracing::info!(worker_id = %engine.settings().worker_id, slots = settings.training_concurrency, "job engine started");
        let mut stopping = stop_rx.clone();
        // A panic ends one loop, not the engine: it is logged with its message and the loop
        // started again after a backoff (`loraforge_engine::supervise`).
        Some(tokio::spawn(loraforge_engine::supervise(
            health,
            move || {
                let engine = engine.clone();
                let wake = wake.clone();
                let mut stop = stop_rx.clone();
                engine.run_shared(wake, async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
            },
            async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            },
        )))
    } else {
        tracing::warn!(
            "the job engine is off (engine_enabled = false): created LoRAs wait as pending"
        );
        None
    };
    let mut sweep_stop = stop_tx.subscribe();
    let sweeps = tokio::spawn(loraforge_server::maintenance::run(
        state.clone(),
        Duration::from_secs(3600),
        async move {
            let _ = sweep_stop.wait_for(|stop| *stop).await;
        },
    ));
    let mut webhooks_stop = stop_tx.subscribe();
    let webhooks = tokio::spawn(loraforge_server::client_webhooks::run(
        state.clone(),
        async move {
            let _ = webhooks_stop.wait_for(|stop| *stop).await;
        },
    ));
    let collector = settings.metrics_enabled.then(|| {
        let mut stop = stop_tx.subscribe();
        tokio::spawn(loraforge_server::metrics_collector::run(
            state.clone(),
            loraforge_server::metrics_collector::EVERY,
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            },
        ))
    });
    let mut delivery_stop = stop_tx.subscribe();
    let delivery = tokio::spawn(loraforge_server::alerts::run(
        alert_repo.clone(),
        Arc::new(loraforge_domain::SystemClock),
        alert_channels,
        loraforge_server::alerts::DeliveryPolicy::default(),
        Duration::from_secs(30),
        async move {
            let _ = delivery_stop.wait_for(|stop| *stop).await;
        },
    ));
    let creator_mail = match settings.mailer()? {
        Some(mailer) => {
            let mut stop = stop_tx.subscribe();
            Some(tokio::spawn(loraforge_server::creator_mail::run(
                alert_repo.clone(),
                Arc::new(loraforge_domain::SystemClock),
                mailer,
                settings.public_url()?,
                Duration::from_secs(30),
                async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                },
            )))
        }
        None => None,
    };
    let app = Application::new(state, listener);
    tracing::info!(%addr, data_dir = %settings.data_dir.display(), database = %loraforge_db::redact_url(&settings.database_url()),
        "loraforge listening; API docs at http://{addr}/docs");
    app.run_until_stopped(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await?;
    if let Some(engine) = engine {
        // The engine stops its runs (the trainers checkpoint) before it returns.
        let _ = engine.await;
    }
    let _ = sweeps.await;
    let _ = webhooks.await;
    if let Some(collector) = collector {
        let _ = collector.await;
    }
    let _ = delivery.await;
    if let Some(mail) = creator_mail {
        let _ = mail.await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
