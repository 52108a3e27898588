//! The worker agent (`loraforge worker`): runs one training attempt of one LoRA on this host and
//! does all the network I/O around it, speaking `docs/worker-protocol.md` with the control plane.
//!
//! One [`run`]: fetch the job (`GET /api/v1/worker/jobs/{id}`), download its images and captions
//! into `--out/images`, run the trainer (`trainer/README.md`) while relaying its progress and
//! heartbeats, upload the outputs to their signed URLs, post the result, and exit with the
//! protocol's code. When an earlier attempt trained but could not upload, `--out/result.json`
//! says so and training is skipped.
//!
//! stdout carries nothing but, on failure, one last `{"event":"error",…}` line (the trainer's
//! own when it failed); human logs go through `tracing`. The bearer token and the signed URLs are
//! credentials: they are never logged (errors are stripped of URLs; uploads are named by key).
//!
//! Modules: `api` (HTTP, errors, retries), `job` (wire types), `files` (downloads, uploads,
//! hashes), `trainer` (the child process and its lines), `relay` (progress and heartbeats),
//! `halt` (how an attempt ends), `layout` (the job folder), `outputs` (the finished run judged,
//! its files uploaded, the result body), `remote` (the worker's part played
//! by the control plane for a provider that runs the trainer but not the worker).

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

mod api;
mod checkpoints;
mod files;
mod halt;
mod job;
mod layout;
mod outputs;
mod relay;
pub mod remote;
mod sample;
mod trainer;

use api::{ControlPlane, Failed, retrying};
use job::{Job, Kept};
use relay::{Feed, Relay, RelaySettings};
use trainer::TrainerPaths;

pub(crate) use halt::{Exit, Halt, or_halt, raise};
use halt::{job_failure, result_failure};
use layout::{Layout, cleanup, load_kept};
use outputs::{result_body, trained, upload_all};

/// The worker's exit codes (`docs/worker-protocol.md`), from the one outcome table; the
/// trainer's own pass through.
pub use loraforge_domain::outcome::exit;
pub use sample::{SampleConfig, run_sample};

/// How long the last checkpoint may take to finish uploading when training ends (a stop request
/// writes one on the way out).
const CHECKPOINT_UPLOAD_LIMIT: Duration = Duration::from_secs(90);

/// The first pause between retries of a failed HTTP call (it doubles: 2 s, 4 s, 8 s).
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(2);

/// How to run one attempt.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The control plane's base URL as this host reaches it.
    pub server: url::Url,
    /// The LoRA (job) id.
    pub lora_id: String,
    /// The per-attempt bearer token (`LORAFORGE_WORKER_TOKEN`). Never logged.
    pub token: String,
    /// The job's folder on this host, the same for every attempt.
    pub out: PathBuf,
    pub trainer: TrainerCommand,
    /// First pause between retries; doubles ([`DEFAULT_RETRY_DELAY`]).
    pub retry_delay: Duration,
    /// Tests only: adds `debug_fail_at_step` to the trainer spec (NaN loss at that step).
    pub debug_fail_at_step: Option<u64>,
    /// A trainer that writes nothing for this long is taken for hung and stopped
    /// ([`DEFAULT_TRAINER_SILENCE`]).
    pub trainer_silence: Duration,
}

/// How long the trainer may write nothing before it is taken for hung: long enough for a first
/// download of a base model from the Hugging Face hub, which it does silently.
pub const DEFAULT_TRAINER_SILENCE: Duration = Duration::from_secs(30 * 60);

impl WorkerConfig {
    /// A config with the default retry delay and no debug failure.
    pub fn new(
        server: url::Url,
        lora_id: impl Into<String>,
        token: impl Into<String>,
        out: impl Into<PathBuf>,
        trainer: TrainerCommand,
    ) -> Self {
        Self {
            server,
            lora_id: lora_id.into(),
            token: token.into(),
            out: out.into(),
            trainer,
            retry_delay: DEFAULT_RETRY_DELAY,
            debug_fail_at_step: None,
            trainer_silence: DEFAULT_TRAINER_SILENCE,
        }
    }
}

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("server", &self.server.as_str())
            .field("lora_id", &self.lora_id)
            .field("token", &"<redacted>")
            .field("out", &self.out)
            .field("trainer", &self.trainer)
            .field("retry_delay", &self.retry_delay)
            .field("debug_fail_at_step", &self.debug_fail_at_step)
            .field("trainer_silence", &self.trainer_silence)
            .finish()
    }
}

/// How the trainer is started: `program args… train --spec … --images … --out … --resume`.
#[derive(Debug, Clone)]
pub struct TrainerCommand {
    pub program: PathBuf,
    /// Before the `train` subcommand, e.g. `["-m", "loraforge_trainer"]`.
    pub args: Vec<String>,
    /// Added to the worker's environment (from which `LORAFORGE_WORKER_TOKEN` is removed).
    pub env: Vec<(String, String)>,
}

impl TrainerCommand {
    /// `python -m loraforge_trainer`.
    pub fn python(python: impl Into<PathBuf>) -> Self {
        Self {
            program: python.into(),
            args: vec!["-m".into(), "loraforge_trainer".into()],
            env: Vec::new(),
        }
    }
}

/// Runs one attempt end to end and returns the process exit code (`docs/worker-protocol.md`).
/// SIGTERM or SIGINT stops it (the trainer checkpoints; exit 10). On failure the last line
/// written to stdout is an `{"event":"error",…}` line.
pub async fn run(config: WorkerConfig) -> i32 {
    run_inner(config, std::io::stdout(), os_stop()).await
}

/// [`run`] with the error line written to `stdout` and `stop` in place of SIGTERM/SIGINT:
/// when `stop` completes, the attempt stops as on a signal (exit 10). For tests and embedding.
pub async fn run_with(
    config: WorkerConfig,
    stdout: impl Write + Send,
    stop: impl Future<Output = ()> + Send + 'static,
) -> i32 {
    run_inner(config, stdout, async move {
        stop.await;
        "a stop request"
    })
    .await
}

/// Completes on the first SIGTERM or SIGINT, naming it. The handlers are installed at once,
/// before the attempt starts.
fn os_stop() -> impl Future<Output = &'static str> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| {
        let installed = signal(kind);
        if let Err(e) = &installed {
            tracing::warn!(error = %e, "cannot listen for {name}");
        }
        async move {
            match installed {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
            name
        }
    };
    let term = listen(SignalKind::terminate(), "SIGTERM");
    let int = listen(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            name = term => name,
            name = int => name,
        }
    }
}

async fn run_inner(
    config: WorkerConfig,
    mut stdout: impl Write + Send,
    stop: impl Future<Output = &'static str> + Send + 'static,
) -> i32 {
    let span = tracing::info_span!("worker", lora = %config.lora_id);
    async move {
        let (halt_tx, _) = watch::channel(None);
        let stopper = {
            let halt_tx = halt_tx.clone();
            tokio::spawn(async move {
                let what = stop.await;
                tracing::info!("{what}: stopping");
                raise(&halt_tx, Halt::Stop(what));
            })
        };
        let exit = match std::path::absolute(&config.out) {
            Ok(out) => {
                let mut reporter = None;
                let exit = attempt(&config, &out, &halt_tx, &mut reporter).await;
                if let (Some((api, attempt_no)), Some((code, reason, retryable))) =
                    (reporter, exit.failure_report())
                {
                    let stopping = matches!(*halt_tx.borrow(), Some(Halt::Stop(_)));
                    report_failure(&api, attempt_no, code, reason, retryable, &config, stopping)
                        .await;
                }
                cleanup(&out, exit.code).await;
                exit
            }
            Err(e) => Exit::error(
                "io_error",
                format!(
                    "the job folder {} cannot be used: {e}",
                    config.out.display()
                ),
            ),
        };
        stopper.abort();
        if let Some(line) = &exit.line {
            tracing::warn!(exit = exit.code, "attempt failed: {line}");
            if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
                tracing::error!(error = %e, "cannot write the error line to stdout");
            }
        } else {
            tracing::info!("attempt done");
        }
        exit.code
    }
    .instrument(span)
    .await
}

/// Tells the control plane how the attempt ended (`POST …/failure`), so a run on any host is
/// decided on by what its worker said, not by an exit status. Retried like every call, except
/// when the worker is stopping (a shutdown, or its service is gone): then one try.
async fn report_failure(
    api: &ControlPlane,
    attempt: u64,
    code: String,
    reason: Option<String>,
    retryable: bool,
    cfg: &WorkerConfig,
    stopping: bool,
) {
    let body = job::FailureBody {
        attempt,
        code,
        reason,
        retryable,
    };
    let sent = if stopping {
        api.failure(&body)
            .await
            .map_err(|error| Failed { error, tries: 1 })
    } else {
        retrying("reporting the failure", cfg.retry_delay, || {
            api.failure(&body)
        })
        .await
    };
    match sent {
        Ok(()) => tracing::info!(code = %body.code, "failure reported"),
        Err(Failed { error, tries }) => {
            tracing::warn!(%error, tries, code = %body.code, "could not report the failure; the engine learns of it from the instance")
        }
    }
}

/// One attempt; `reporter` is set to the control plane and the attempt number once the job is
/// fetched (after that, a failure can be reported).
async fn attempt(
    cfg: &WorkerConfig,
    out: &Path,
    halt_tx: &watch::Sender<Option<Halt>>,
    reporter: &mut Option<(Arc<ControlPlane>, u64)>,
) -> Exit {
    let mut halt = halt_tx.subscribe();
    let http = match api::client() {
        Ok(c) => c,
        Err(e) => return Exit::error("internal", format!("cannot set up the HTTP client: {e}")),
    };
    let api = match ControlPlane::new(http.clone(), &cfg.server, &cfg.lora_id, cfg.token.clone()) {
        Ok(api) => Arc::new(api),
        Err(e) => return Exit::error("bad_server_url", format!("{e}; check --server")),
    };

    // 1. The job.
    let server = cfg.server.origin().ascii_serialization();
    tracing::info!(%server, "fetching the job");
    let job = match or_halt(
        &mut halt,
        retrying("fetching the job", cfg.retry_delay, || api.job()),
    )
    .await
    {
        Err(h) => return Exit::halted(h, "before it had its job"),
        Ok(Err(failed)) => return job_failure(failed, cfg, &server),
        Ok(Ok(job)) => job,
    };
    tracing::info!(
        attempt = job.attempt,
        images = job.images.len(),
        "job fetched"
    );
    *reporter = Some((api.clone(), job.attempt));

    let (progress, progress_rx) = relay::feed();
    let heartbeat_interval = Duration::try_from_secs_f64(job.heartbeat_interval_s)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(10));
    let relay = Relay::start(
        api.clone(),
        RelaySettings {
            attempt: job.attempt,
            progress_interval: Duration::from_millis(job.progress_interval_ms),
            heartbeat_interval,
            unreachable_limit: unreachable_limit(heartbeat_interval),
        },
        progress_rx,
        halt_tx.clone(),
    );

    let layout = Layout::new(out);
    if let Err(e) = tokio::fs::create_dir_all(&layout.out).await {
        return Exit::error(
            "io_error",
            format!("cannot create the job folder {}: {e}", layout.out.display()),
        );
    }

    // 2.–3. Training, unless an earlier attempt trained and kept its outputs.
    let attempt_no = job.attempt;
    let Job {
        trainer_spec,
        images,
        uploads,
        checkpoint,
        ..
    } = job;
    let kept = match load_kept(&layout).await {
        Some(kept) => {
            tracing::info!(
                trained_by_attempt = kept.attempt,
                "outputs of an earlier attempt are kept in the job folder; skipping training"
            );
            kept
        }
        None => match train(
            cfg,
            attempt_no,
            trainer_spec,
            images,
            checkpoint,
            &layout,
            &http,
            &api,
            &progress,
            halt_tx,
        )
        .await
        {
            Ok(kept) => kept,
            Err(exit) => return exit,
        },
    };

    // 6. Uploads.
    let uploaded = match or_halt(
        &mut halt,
        upload_all(&http, &uploads, &layout, cfg.retry_delay),
    )
    .await
    {
        Err(h) => return Exit::halted(h, "while uploading the outputs"),
        Ok(Err(exit)) => return exit,
        Ok(Ok(u)) => u,
    };
    drop(progress);
    relay.finish().await;
    let halted = halt.borrow().clone();
    if let Some(h) = halted {
        return Exit::halted(h, "after uploading the outputs");
    }

    // The result.
    let body = result_body(attempt_no, &kept, uploaded);
    match or_halt(
        &mut halt,
        retrying("posting the result", cfg.retry_delay, || api.result(&body)),
    )
    .await
    {
        Err(h) => Exit::halted(h, "while reporting the result"),
        Ok(Ok(answer)) => {
            tracing::info!(status = ?answer.status, error = ?answer.error, "result accepted");
            Exit::ok()
        }
        Ok(Err(failed)) => result_failure(failed, &layout),
    }
}

/// Training: the images, the spec, the trainer. `Ok` when the trainer exited 0 with its outputs
/// (then `result.json` is written).
#[allow(clippy::too_many_arguments)]
async fn train(
    cfg: &WorkerConfig,
    attempt: u64,
    trainer_spec: serde_json::Value,
    images: Vec<job::ImageRef>,
    checkpoint: Option<job::CheckpointPlan>,
    layout: &Layout,
    http: &reqwest::Client,
    api: &Arc<ControlPlane>,
    progress: &Feed,
    halt_tx: &watch::Sender<Option<Halt>>,
) -> Result<Kept, Exit> {
    let mut halt = halt_tx.subscribe();
    let images = files::check_images(images).map_err(|reason| Exit::error("bad_job", reason))?;
    let serde_json::Value::Object(mut spec) = trainer_spec else {
        return Err(Exit::error(
            "bad_job",
            "the job's trainer_spec is not a JSON object; the control plane sent an invalid job",
        ));
    };
    if let Some(step) = cfg.debug_fail_at_step {
        spec.insert("debug_fail_at_step".into(), step.into());
    }
    let local = |what: &str, path: &Path, e: std::io::Error| {
        Exit::error("io_error", format!("cannot {what} {}: {e}", path.display()))
    };

    // Images and captions, into a fresh folder.
    files::remove_tree(&layout.images).await;
    tokio::fs::create_dir_all(&layout.images)
        .await
        .map_err(|e| local("create", &layout.images, e))?;
    tracing::info!(images = images.len(), "downloading the images");
    let downloaded = files::download_images(http, &images, &layout.images, cfg.retry_delay);
    match or_halt(&mut halt, downloaded).await {
        Err(h) => return Err(Exit::halted(h, "while downloading the images")),
        Ok(Err(files::DownloadError::Local(reason))) => {
            return Err(Exit::error("io_error", reason));
        }
        Ok(Err(files::DownloadError::Http { file_name, failed })) => {
            return Err(Exit::error(
                "image_download_failed",
                format!(
                    "could not download image {file_name} of the job's dataset: {} ({} tries); the storage may be \
                     unreachable from this host — the engine retries the job",
                    failed.error, failed.tries
                ),
            ));
        }
        Ok(Ok(())) => {}
    }

    let spec_json = serde_json::to_vec_pretty(&spec).expect("a JSON map serializes");
    files::write_atomic(&layout.spec, &spec_json)
        .await
        .map_err(|e| local("write", &layout.spec, e))?;

    // The newest checkpoint of an earlier attempt (on any host), where `--resume` finds it; and
    // this attempt's checkpoints, uploaded as they are written.
    let mut uploader = None;
    if let Some(plan) = checkpoint {
        if let Some(resume) = &plan.resume {
            let fetched =
                checkpoints::fetch_resume_point(http, resume, &layout.train, cfg.retry_delay);
            match or_halt(&mut halt, fetched).await {
                Err(h) => return Err(Exit::halted(h, "while downloading the checkpoint")),
                Ok(Err(reason)) => {
                    return Err(Exit::error(
                        "checkpoint_download_failed",
                        format!(
                            "could not download the checkpoint of step {} to resume from: {reason}",
                            resume.step
                        ),
                    ));
                }
                Ok(Ok(_)) => {}
            }
        }
        match url::Url::parse(&plan.upload.url) {
            Ok(url) => {
                uploader = Some(checkpoints::Uploader::start(
                    http.clone(),
                    api.clone(),
                    attempt,
                    url,
                    cfg.retry_delay,
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the checkpoint link is not a URL; checkpoints stay on this host")
            }
        }
    }

    let paths = TrainerPaths {
        spec: &layout.spec,
        images: &layout.images,
        out: &layout.train,
    };
    let sender = uploader.as_ref().map(checkpoints::Uploader::sender);
    let mut run = trainer::run(
        &cfg.trainer,
        paths,
        progress,
        sender,
        halt_tx.subscribe(),
        cfg.trainer_silence,
    )
    .await;
    if let Ok(r) = run.as_mut() {
        // The last sender: once it is gone the uploader knows no more checkpoints come.
        r.said.checkpoints = None;
    }
    if let Some(uploader) = uploader {
        uploader.finish(CHECKPOINT_UPLOAD_LIMIT).await;
    }
    let run = run.map_err(|e| {
        Exit::error("trainer_unavailable",
            format!(
                "cannot start the trainer {}: {e}; set LORAFORGE_TRAINER_PYTHON to a Python with the trainer's \
                 packages, or run `loraforge setup-trainer`",
                cfg.trainer.program.display()
            ),
        )
    })?;
    // The images are not needed any more (the trainer caches what it uses).
    files::remove_tree(&layout.images).await;

    let stopped_at = run.said.stopped_at;
    let outcome = trained(run, attempt, layout).await;
    let halted = halt.borrow().clone();
    if let Some(h) = halted {
        let during = match stopped_at {
            Some(step) => format!("while training (the trainer checkpointed at step {step})"),
            None => "while training".to_owned(),
        };
        return Err(Exit::halted(h, &during));
    }
    outcome
}

/// How long a worker goes on without any answer from the control plane: 60 heartbeats (10 min
/// at the default 10 s), at least 3 s. Long enough to ride out a restart of the service, which
/// adopts the run; bounded so a worker whose service never returns stops (and checkpoints).
fn unreachable_limit(heartbeat: Duration) -> Duration {
    (heartbeat * 60).max(Duration::from_secs(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkerConfig {
        WorkerConfig::new(
            "http://127.0.0.1:1".parse().unwrap(),
            "01",
            "secret-token-value",
            "/tmp/x",
            TrainerCommand::python("python3"),
        )
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains("secret-token-value"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn run_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let fut = run(config());
        is_send(&fut);
        let fut = run_with(config(), Vec::new(), std::future::pending());
        is_send(&fut);
    }

    #[test]
    fn error_lines_have_the_trainers_shape() {
        let e = Exit::error("upload_failed", "uploading \"x\" failed");
        assert_eq!(
            e.line.as_deref(),
            Some(
                r#"{"event":"error","code":"upload_failed","reason":"uploading \"x\" failed","exit_code":11}"#
            )
        );
        assert_eq!(
            Exit::halted(Halt::Stop("SIGTERM"), "while training").code,
            10
        );
        assert_eq!(
            Exit::halted(Halt::NotActive("cancelled".into()), "while training").code,
            12
        );
        assert_eq!(
            Exit::halted(Halt::Refused("401".into()), "while training").code,
            13
        );
    }

    #[tokio::test]
    async fn cleanup_keeps_foreign_files_and_follows_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let make = || {
            std::fs::create_dir_all(out.join("images")).unwrap();
            std::fs::create_dir_all(out.join("train/checkpoints")).unwrap();
            std::fs::write(out.join("result.json"), "{}").unwrap();
            std::fs::write(out.join("trainer-spec.json"), "{}").unwrap();
        };
        for code in [10, 11, 12, 13] {
            make();
            cleanup(&out, code).await;
            assert!(!out.join("images").exists());
            assert!(
                out.join("train/checkpoints").exists() && out.join("result.json").exists(),
                "{code}"
            );
        }
        for code in [0, 1, 3, 5] {
            make();
            cleanup(&out, code).await;
            assert!(!out.exists(), "{code}");
        }
        make();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        cleanup(&out, 0).await;
        assert_eq!(
            std::fs::read_to_string(out.join("notes.txt")).unwrap(),
            "mine"
        );
        assert!(!out.join("train").exists());
    }
}
