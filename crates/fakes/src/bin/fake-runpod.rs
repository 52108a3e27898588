//! A standalone fake RunPod for benchmarks: GraphQL pods whose images run no process, so 1,000
//! pods that stay running cost a little memory each.
//!
//! `fake-runpod --port 8911 --api-key KEY --gpu "NVIDIA RTX A6000=1000@0.79" --image runpod/pytorch`
//! prints `GRAPHQL_URL=…` and `SERVERLESS_BASE_URL=…`, then serves until Ctrl-C or SIGTERM.
//! With `--calls-log FILE` it appends one JSON line per deploy, terminate, run and cancel it
//! received, with the time the fake handled it (`at`, RFC 3339; `at_unix`, seconds) and, for
//! pods, the pod's name: `{"op":"terminate","pod_id":"…","name":"loraforge-<lora>-1",…}`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use loraforge_fakes::{Call, CallOp, FakeConfig, FakeRunpod, GpuType, ImageSpec};
use serde_json::json;

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
    /// Append every deploy, terminate, run and cancel to this file as JSON lines (written within
    /// ~20 ms of the call; the recorded time is the call's own).
    #[arg(long)]
    calls_log: Option<PathBuf>,
}

/// One call as a JSON line.
fn call_line(fake: &FakeRunpod, call: &Call) -> serde_json::Value {
    let at = call.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let at_unix = call.at.timestamp_micros() as f64 / 1e6;
    match &call.op {
        CallOp::Deploy {
            name,
            gpu_type,
            pod_id,
            error,
        } => json!({
            "at": at, "at_unix": at_unix, "op": "deploy", "name": name, "gpu_type": gpu_type,
            "pod_id": pod_id, "error": error,
        }),
        CallOp::Terminate { pod_id, found } => json!({
            "at": at, "at_unix": at_unix, "op": "terminate", "pod_id": pod_id, "found": found,
            "name": fake.pod(pod_id).map(|p| p.name),
        }),
        CallOp::Run { endpoint, job_id } => json!({
            "at": at, "at_unix": at_unix, "op": "run", "endpoint": endpoint, "job_id": job_id,
        }),
        CallOp::Cancel {
            endpoint,
            job_id,
            found,
        } => json!({
            "at": at, "at_unix": at_unix, "op": "cancel", "endpoint": endpoint, "job_id": job_id, "found": found,
        }),
    }
}

/// Appends the calls not written yet; returns how many have been written in all.
fn write_calls(fake: &FakeRunpod, out: &mut std::fs::File, seen: usize) -> std::io::Result<usize> {
    let new = fake.calls_since(seen);
    if new.is_empty() {
        return Ok(seen);
    }
    let mut text = String::new();
    for call in &new {
        text.push_str(&call_line(fake, call).to_string());
        text.push('\n');
    }
    out.write_all(text.as_bytes())?;
    Ok(seen + new.len())
}

fn open_log(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
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
    let mut log = args.calls_log.as_deref().map(open_log).transpose()?;
    let mut seen = 0;
    let mut every = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = every.tick(), if log.is_some() => {
                if let Some(out) = log.as_mut() {
                    seen = write_calls(&fake, out, seen).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    if let Some(out) = log.as_mut() {
        write_calls(&fake, out, seen).map_err(|e| e.to_string())?;
    }
    drop(fake);
    Ok(())
}
