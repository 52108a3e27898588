//! A standalone fake RunPod for benchmarks: GraphQL pods whose images run no process, so 1,000
//! pods that stay running cost a little memory each.
//!
//! `fake-runpod --port 8911 --api-key KEY --gpu "NVIDIA RTX A6000=1000@0.79" --image runpod/pytorch`
//! prints `GRAPHQL_URL=…` and `SERVERLESS_BASE_URL=…`, then serves until Ctrl-C or SIGTERM.

use std::time::Duration;

use clap::Parser;
use loraforge_fakes::{FakeConfig, FakeRunpod, GpuType, ImageSpec};

#[derive(Parser)]
#[command(about = "A local fake of RunPod's GraphQL pod API (pods run no process)")]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long, env = "FAKE_RUNPOD_API_KEY", default_value = "fake-key")]
    api_key: String,
    /// GPU type on offer as `NAME=COUNT@PRICE` (dollars per hour); repeatable.
    #[arg(long = "gpu", default_value = "NVIDIA RTX A6000=1000@0.79")]
    gpus: Vec<String>,
    /// Image names that stay running without a process (any other image behaves the same).
    #[arg(long = "image")]
    images: Vec<String>,
    /// How long a new pod's `runtime` stays null, in milliseconds.
    #[arg(long, default_value_t = 300)]
    boot_delay_ms: u64,
}

fn parse_gpu(text: &str) -> Result<GpuType, String> {
    let (name, rest) = text.rsplit_once('=').ok_or("expected NAME=COUNT@PRICE")?;
    let (count, price) = rest.split_once('@').ok_or("expected NAME=COUNT@PRICE")?;
    let available = count.parse().map_err(|_| format!("bad count {count:?}"))?;
    let cost_per_hr_micros =
        loraforge_fakes::parse_price(price).ok_or(format!("bad price {price:?}"))?;
    Ok(GpuType {
        id: name.to_owned(),
        available,
        cost_per_hr_micros,
    })
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut config = FakeConfig::new(args.api_key);
    config.bind = ([127, 0, 0, 1], args.port).into();
    config.boot_delay = Duration::from_millis(args.boot_delay_ms);
    for gpu in &args.gpus {
        config.gpu_types.push(parse_gpu(gpu)?);
    }
    for image in args.images {
        config.images.insert(image, ImageSpec::idle());
    }
    let fake = FakeRunpod::try_start(config)
        .await
        .map_err(|e| e.to_string())?;
    println!("GRAPHQL_URL={}", fake.graphql_url());
    println!("SERVERLESS_BASE_URL={}", fake.serverless_base_url());
    // Serve until Ctrl-C or SIGTERM; dropping the fake then stops it cleanly.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(fake);
    Ok(())
}
