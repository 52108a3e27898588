//! `loraforge worker`: one training attempt on this host (`docs/worker-protocol.md`). `serve`'s
//! local backend starts it per job; a container or a pod runs the same command. The agent
//! itself is `loraforge-worker`; this wires in the trainer's interpreter and the stop signals.

use std::path::PathBuf;
use std::time::Duration;

use loraforge_worker::{TrainerCommand, WorkerConfig};

use crate::settings::Settings;
use crate::trainer_env;

/// The exit code of the attempt.
pub async fn run(settings: &Settings, server: url::Url, lora: String, out: PathBuf) -> i32 {
    let Some(token) = std::env::var("LORAFORGE_WORKER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    else {
        return fail(
            loraforge_worker::exit::UNREACHABLE,
            "no_token",
            "LORAFORGE_WORKER_TOKEN is not set; the control plane issues one per attempt",
        );
    };
    let runtime = match trainer_env::runtime(settings) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                loraforge_worker::exit::INTERNAL,
                "trainer_unavailable",
                &format!("the trainer environment on this host is not usable: {e:#}"),
            );
        }
    };
    let mut env = runtime.env;
    if let Some(home) = hf_home(
        std::env::var_os("LORAFORGE_HF_HOME").map(PathBuf::from),
        std::env::var_os("HF_HOME").is_some(),
        |p| p.is_dir(),
    ) {
        tracing::info!(hf_home = %home.display(), "base weights are cached here");
        env.push(("HF_HOME".to_owned(), home.display().to_string()));
    }
    let class_images = class_images_cache(
        std::env::var_os("LORAFORGE_CLASS_IMAGES_CACHE").map(PathBuf::from),
        &settings.data_dir,
        |p| p.is_dir(),
    );
    env.push((
        "LORAFORGE_CLASS_IMAGES_CACHE".to_owned(),
        class_images.display().to_string(),
    ));
    let trainer = TrainerCommand {
        program: runtime.python,
        args: trainer_env::trainer_args(),
        env,
    };
    if let Some(batch) = std::env::var(loraforge_engine::SAMPLE_BATCH_ENV)
        .ok()
        .filter(|b| !b.is_empty())
    {
        let config = loraforge_worker::SampleConfig {
            server,
            batch,
            token,
            out,
            trainer,
            retry_delay: Duration::from_millis(settings.worker_retry_delay_ms.max(1)),
            debug_fail: std::env::var("LORAFORGE_WORKER_DEBUG_FAIL_SAMPLES")
                .is_ok_and(|v| v == "1"),
        };
        return loraforge_worker::run_sample(config, std::io::stdout()).await;
    }
    let mut config = WorkerConfig::new(server, lora, token, out, trainer);
    config.retry_delay = Duration::from_millis(settings.worker_retry_delay_ms.max(1));
    config.debug_fail_at_step = std::env::var("LORAFORGE_WORKER_DEBUG_FAIL_AT_STEP")
        .ok()
        .and_then(|s| s.parse().ok());
    if let Some(secs) = std::env::var("LORAFORGE_WORKER_TRAINER_SILENCE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        config.trainer_silence = Duration::from_secs(secs.max(1));
    }
    let exit_with_parent =
        std::env::var("LORAFORGE_WORKER_EXIT_WITH_PARENT").is_ok_and(|v| v == "1");
    loraforge_worker::run_with(config, std::io::stdout(), stop_requested(exit_with_parent)).await
}

/// Where the trainer caches base weights (`HF_HOME`): `LORAFORGE_HF_HOME` when set; else, unless
/// `HF_HOME` is set already, the network volume when one is mounted (`/runpod-volume` on RunPod
/// serverless, `/workspace` on a pod), so weights are downloaded once per volume, not per run;
/// else Hugging Face's default (downloaded at start, `HF_TOKEN` passed through).
fn hf_home(
    configured: Option<PathBuf>,
    hf_home_set: bool,
    is_dir: impl Fn(&std::path::Path) -> bool,
) -> Option<PathBuf> {
    if configured.is_some() {
        return configured;
    }
    if hf_home_set {
        return None;
    }
    network_volume(is_dir).map(|p| p.join("huggingface"))
}

/// The network volume mounted on this host: `/runpod-volume` (RunPod serverless) or
/// `/workspace` (a pod).
fn network_volume(is_dir: impl Fn(&std::path::Path) -> bool) -> Option<PathBuf> {
    ["/runpod-volume", "/workspace"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| is_dir(p))
        .map(std::path::Path::to_path_buf)
}

/// Where DreamBooth's class images are kept for every job on this host
/// (`LORAFORGE_CLASS_IMAGES_CACHE` for the trainer), so a set made for one job is reused by the
/// next: `LORAFORGE_CLASS_IMAGES_CACHE` when set; else the network volume when one is mounted
/// (it outlives pods); else `<data_dir>/cache/class-images`.
fn class_images_cache(
    configured: Option<PathBuf>,
    data_dir: &std::path::Path,
    is_dir: impl Fn(&std::path::Path) -> bool,
) -> PathBuf {
    configured
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| network_volume(is_dir).map(|v| v.join("loraforge").join("class-images")))
        .unwrap_or_else(|| data_dir.join("cache").join("class-images"))
}

/// Completes on SIGTERM or SIGINT, or — with `exit_with_parent` — once the process that started
/// this worker is gone (a `serve` killed with SIGKILL cannot stop its children itself; its
/// successor requeues the job and resumes it from the checkpoint this stop writes).
async fn stop_requested(exit_with_parent: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let parent = std::os::unix::process::parent_id();
    let orphaned = async move {
        if !exit_with_parent {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if std::os::unix::process::parent_id() != parent {
                tracing::warn!(
                    parent,
                    "the service that started this worker is gone; stopping"
                );
                return;
            }
        }
    };
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    let int = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::select! { () = orphaned => {}, () = term => {}, () = int => {} }
}

/// The protocol's last stdout line for a failure before the agent ran.
fn fail(code: i32, kind: &str, reason: &str) -> i32 {
    use std::io::Write;
    // Written with errors ignored: the reader may be gone, and a worker never panics for that.
    let _ = writeln!(std::io::stderr(), "loraforge worker: {reason}");
    let line =
        serde_json::json!({ "event": "error", "code": kind, "reason": reason, "exit_code": code });
    let _ = writeln!(std::io::stdout(), "{line}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_weights_go_to_the_volume_when_one_is_mounted() {
        let none = |_: &std::path::Path| false;
        let pod = |p: &std::path::Path| p == std::path::Path::new("/workspace");
        let both = |_: &std::path::Path| true;
        assert_eq!(hf_home(Some("/x".into()), true, both), Some("/x".into()));
        assert_eq!(
            hf_home(None, true, both),
            None,
            "an HF_HOME of the image wins"
        );
        assert_eq!(
            hf_home(None, false, both),
            Some("/runpod-volume/huggingface".into())
        );
        assert_eq!(
            hf_home(None, false, pod),
            Some("/workspace/huggingface".into())
        );
        assert_eq!(hf_home(None, false, none), None);
    }

    #[test]
    fn class_images_are_shared_by_the_hosts_jobs() {
        let data = std::path::Path::new("/data");
        let none = |_: &std::path::Path| false;
        let pod = |p: &std::path::Path| p == std::path::Path::new("/workspace");
        assert_eq!(
            class_images_cache(Some("/c".into()), data, pod),
            PathBuf::from("/c")
        );
        assert_eq!(
            class_images_cache(None, data, pod),
            PathBuf::from("/workspace/loraforge/class-images")
        );
        assert_eq!(
            class_images_cache(Some(PathBuf::new()), data, none),
            PathBuf::from("/data/cache/class-images")
        );
    }
}
