//! A standalone fake Docker Engine for trying the `docker` backend without Docker: containers run
//! their command as local processes.
//!
//! `fake-docker --port 2375 --image ghcr.io/acme/loraforge-worker:0.1.0 --program loraforge=$(which loraforge) --gpus 1`
//! prints `DOCKER_HOST=tcp://127.0.0.1:PORT`, then serves until Ctrl-C or SIGTERM (which kills
//! every container process it started). Point `LORAFORGE_DOCKER_HOST` at it.

use std::path::PathBuf;

use clap::Parser;
use loraforge_fakes::{DockerImage, FakeDocker, FakeDockerConfig, ImageSpec};

#[derive(Parser)]
#[command(about = "A local fake of the Docker Engine API whose containers run as processes")]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Also serve on this unix socket.
    #[arg(long)]
    unix_socket: Option<PathBuf>,
    /// An image present on the host (`repo:tag`); repeatable.
    #[arg(long = "image")]
    images: Vec<String>,
    /// An image a pull can fetch; repeatable.
    #[arg(long = "registry-image")]
    registry: Vec<String>,
    /// `NAME=PATH`: the program `NAME` on every image's `PATH` runs the local file `PATH`
    /// (e.g. `loraforge=/usr/local/bin/loraforge`); repeatable.
    #[arg(long = "program")]
    programs: Vec<String>,
    /// GPUs on the fake host (0: containers asking for GPUs fail to start).
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// Every pull fails with this message.
    #[arg(long)]
    pull_error: Option<String>,
    /// Probability (0–1) that a request answers 500.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where container logs go (default: a temporary folder).
    #[arg(long)]
    logs_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut image =
        DockerImage::new(ImageSpec::idle().with_env("PATH", "/usr/local/bin:/usr/bin:/bin"));
    for program in &args.programs {
        let (name, path) = program
            .split_once('=')
            .ok_or(format!("--program {program:?}: expected NAME=PATH"))?;
        image = image.with_program(name, path);
    }
    if !(0.0..=1.0).contains(&args.fail_rate) {
        return Err("--fail-rate must be between 0 and 1".into());
    }
    let mut config = FakeDockerConfig::default().with_gpus(args.gpus);
    config.bind = ([127, 0, 0, 1], args.port).into();
    config.unix_socket = args.unix_socket;
    config.pull_error = args.pull_error;
    config.fail_rate = args.fail_rate;
    config.seed = args.seed;
    config.logs_dir = args.logs_dir;
    for reference in &args.images {
        config = config.with_image(reference, image.clone());
    }
    for reference in &args.registry {
        config = config.with_registry_image(reference, image.clone());
    }
    let fake = FakeDocker::try_start(config)
        .await
        .map_err(|e| e.to_string())?;
    println!("DOCKER_HOST={}", fake.host());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(fake);
    Ok(())
}
