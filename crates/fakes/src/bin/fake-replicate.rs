//! A standalone fake Replicate (trainings API) for manual runs and benchmarks.
//!
//! `fake-replicate --port 8912 --token KEY --model acme/loras --python PY --repo DIR` serves
//! `http://127.0.0.1:PORT/v1` (printed as `REPLICATE_API_URL=…`) until Ctrl-C or SIGTERM; each
//! training runs `PY cog/train.py --dataset-url … --spec … --output …` in `DIR`, or, with
//! `--shell SCRIPT`, `/bin/sh -c SCRIPT` (placeholders `{dataset_url}`, `{dataset}`, `{spec}`,
//! `{output}`, `{work}`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use loraforge_fakes::{FakeReplicate, Faults, ReplicateConfig, TrainingCommand};

#[derive(Parser)]
#[command(about = "A local fake of Replicate's trainings API that really runs the trainer")]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long, env = "FAKE_REPLICATE_TOKEN", default_value = "fake-token")]
    token: String,
    /// A model (`owner/name`) that exists as a destination; repeatable.
    #[arg(long = "model", default_value = "loraforge/loras")]
    models: Vec<String>,
    /// The Python that runs `cog/train.py`.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// The repository root holding `cog/train.py`.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Run this shell script per training instead of `cog/train.py`.
    #[arg(long)]
    shell: Option<String>,
    /// Extra environment for the command, `KEY=VALUE`; repeatable.
    #[arg(long = "env")]
    env: Vec<String>,
    /// The webhook signing secret.
    #[arg(long, default_value = ReplicateConfig::DEFAULT_SECRET)]
    webhook_secret: String,
    /// Milliseconds a training stays `starting`.
    #[arg(long, default_value_t = 100)]
    start_delay_ms: u64,
    /// Send every webhook this many extra times.
    #[arg(long, default_value_t = 0)]
    duplicate_webhooks: u32,
    /// Re-send a training's first webhook after its terminal one.
    #[arg(long)]
    replay_webhooks: bool,
    /// Fraction of API requests answered with a fault (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    #[arg(long, default_value_t = 1)]
    fault_seed: u64,
    #[arg(long, default_value_t = 503)]
    fault_status: u16,
    /// Where trainings' folders go (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut command = match args.shell {
        Some(script) => TrainingCommand::shell(script),
        None => TrainingCommand::cog(args.python, args.repo),
    };
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .ok_or(format!("{pair:?} is not KEY=VALUE"))?;
        command = command.with_env(k, v);
    }
    let mut config = ReplicateConfig::new(args.token, command);
    config.bind = ([127, 0, 0, 1], args.port).into();
    config.models = args.models;
    config.webhook_secret = args.webhook_secret;
    config.start_delay = Duration::from_millis(args.start_delay_ms);
    config.duplicate_webhooks = args.duplicate_webhooks;
    config.replay_webhooks = args.replay_webhooks;
    config.work_dir = args.work_dir;
    if args.fault_rate > 0.0 {
        config.faults = Some(Faults::failing(
            args.fault_rate.min(1.0),
            args.fault_seed,
            args.fault_status,
        ));
    }
    let fake = FakeReplicate::try_start(config)
        .await
        .map_err(|e| e.to_string())?;
    println!("REPLICATE_API_URL={}", fake.base_url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(fake);
    Ok(())
}
