//! What a fake Replicate starts with. Facts api-contracts.md §3 marks [U] are settings here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What runs for each training: `program args` with a cleared environment plus `env`. In `args`,
/// `{dataset_url}` is the input's `dataset_url`, `{dataset}` the file the fake downloaded it to,
/// `{spec}` a file holding the input's `spec`, `{output}` where the command must write the
/// weights tar and `{work}` the training's own folder.
#[derive(Debug, Clone)]
pub struct TrainingCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The working directory (default: the training's folder).
    pub cwd: Option<PathBuf>,
}

impl TrainingCommand {
    /// `python cog/train.py --dataset-url {dataset_url} --spec {spec} --output {output}` run in
    /// `repo` (the repository root), as Replicate runs the Cog model's `train()`.
    pub fn cog(python: impl Into<PathBuf>, repo: impl Into<PathBuf>) -> Self {
        Self {
            program: python.into(),
            args: [
                "cog/train.py",
                "--dataset-url",
                "{dataset_url}",
                "--spec",
                "{spec}",
                "--output",
                "{output}",
            ]
            .map(str::to_owned)
            .to_vec(),
            env: vec![("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned())],
            cwd: Some(repo.into()),
        }
    }

    /// `/bin/sh -c script` (the placeholders work in the script too), with a `PATH`.
    pub fn shell(script: impl Into<String>) -> Self {
        Self {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".to_owned(), script.into()],
            env: vec![("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned())],
            cwd: None,
        }
    }

    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// Random failures: each API request (not the weights download, not webhooks) answers
/// `status` with probability `rate`, drawn from a generator seeded with `seed` (the same seed
/// gives the same sequence of failures for the same sequence of requests). Of the creates and
/// cancels that got through, a share `lose_rate` is carried out but answered 504, as when the
/// answer is lost on its way back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    pub rate: f64,
    pub seed: u64,
    pub status: u16,
    pub lose_rate: f64,
}

impl Faults {
    /// `rate` of the requests answer `status`, none is lost.
    pub fn failing(rate: f64, seed: u64, status: u16) -> Self {
        Self {
            rate,
            seed,
            status,
            lose_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplicateConfig {
    /// The API token; accepted as `Bearer <token>` and `Token <token>`.
    pub token: String,
    /// Default 127.0.0.1:0 (a free port).
    pub bind: SocketAddr,
    /// Models (`owner/name`) that exist: a training's `destination` must be one.
    pub models: Vec<String>,
    pub command: TrainingCommand,
    /// Where each training's folder goes; `None` → a temporary directory deleted with the fake.
    pub work_dir: Option<PathBuf>,
    /// The account's webhook signing secret (`whsec_<base64>`).
    pub webhook_secret: String,
    /// How long a training stays `starting` before its command runs (default 100 ms).
    pub start_delay: Duration,
    /// Trainings per page of `GET /trainings` (default 100) [U].
    pub page_size: usize,
    /// Every webhook delivery is sent this many extra times, same id (default 0).
    pub duplicate_webhooks: u32,
    /// After the terminal delivery, re-send the first delivery (same id, timestamp and
    /// signature: a replay) (default false).
    pub replay_webhooks: bool,
    /// Whether a 429 carries `Retry-After` (seconds) [U] (default true).
    pub retry_after_header: bool,
    pub faults: Option<Faults>,
    /// Largest dataset the fake downloads (default 512 MiB).
    pub max_dataset_bytes: u64,
    /// SIGTERM → SIGKILL grace on cancel (default 2 s).
    pub kill_grace: Duration,
    /// The inputs the model version's `train()` declares: a create whose `input` names another
    /// is refused with 422, as a Cog runtime that forbids undeclared inputs does (replicate/cog
    /// before #2943 answered `Unexpected field …`). `None` takes any input (default).
    pub declared_inputs: Option<Vec<String>>,
}

impl ReplicateConfig {
    pub const DEFAULT_SECRET: &'static str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    pub fn new(token: impl Into<String>, command: TrainingCommand) -> Self {
        Self {
            token: token.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            models: Vec::new(),
            command,
            work_dir: None,
            webhook_secret: Self::DEFAULT_SECRET.to_owned(),
            start_delay: Duration::from_millis(100),
            page_size: 100,
            duplicate_webhooks: 0,
            replay_webhooks: false,
            retry_after_header: true,
            faults: None,
            max_dataset_bytes: 512 << 20,
            kill_grace: Duration::from_secs(2),
            declared_inputs: None,
        }
    }

    /// Only `inputs` are declared by the model (see [`Self::declared_inputs`]).
    pub fn with_declared_inputs(mut self, inputs: &[&str]) -> Self {
        self.declared_inputs = Some(inputs.iter().map(|i| (*i).to_owned()).collect());
        self
    }

    pub fn with_model(mut self, owner_name: impl Into<String>) -> Self {
        self.models.push(owner_name.into());
        self
    }
}
