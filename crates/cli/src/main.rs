//! `loraforge`: the one binary. `serve` runs the service; the other commands are its tools.

mod commands;
mod compose;
mod settings;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use loraforge_domain::UserId;
use loraforge_server::{Application, JwtKeys};

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
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration; use e.g. 30m, 1h or 7d"))?;
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

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("LORAFORGE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bind = match &cli.command {
        Command::Serve { bind } => bind.clone(),
        _ => None,
    };
    let over = Overrides { config_file: cli.config.clone(), data_dir: cli.data_dir.clone(), bind };
    let settings = Settings::load(&over)?;
    match cli.command {
        Command::Serve { .. } => serve(settings).await,
        Command::Token { user, email, admin, ttl } => {
            let keys = JwtKeys::new(&settings.jwt_secret()?);
            let token = keys.issue(user, email, admin, ttl, chrono::Utc::now()).context("signing the token")?;
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
        Command::Inspect { file, json } => {
            std::process::exit(commands::inspect::run(&file, json, &compose::lora_rules(&settings)))
        }
        Command::BenchSeed { count, users, seed } => {
            let repo = compose::repository(&settings).await?;
            let started = std::time::Instant::now();
            let seeded = loraforge_db::seed::seed_library(repo.as_ref(), count, users, seed).await?;
            eprintln!(
                "seeded {} LoRAs over {} users in {:.1}s",
                seeded.loras,
                seeded.users.len(),
                started.elapsed().as_secs_f64()
            );
            println!("{}", seeded.vocabulary[0]);
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings.log_format);
    let state = compose::app_state(&settings).await?;
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("binding {} (is another server running there? set --bind)", settings.bind))?;
    let app = Application::new(state, listener);
    let addr = app.local_addr()?;
    tracing::info!(%addr, data_dir = %settings.data_dir.display(), database = %loraforge_db::redact_url(&settings.database_url()),
        "loraforge listening; API docs at http://{addr}/docs");
    app.run_until_stopped(shutdown_signal()).await?;
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
