//! `loraforge doctor`: whether this host can run the service and train — the trainer's Python
//! environment, a GPU, the storage and the database — with one line per check and what to do.
//! Exit 0 when the trainer, storage and database are usable (no GPU is only a warning), else 1.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};

use crate::compose;
use crate::settings::Settings;
use crate::trainer_env::{self, TrainerRuntime};

/// How long the trainer probe (interpreter start plus importing torch and diffusers) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long opening and pinging the storage or the database may take.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Packages the trainer imports, in the order reported.
pub const TRAINER_PACKAGES: [&str; 6] = [
    "loraforge_trainer",
    "torch",
    "diffusers",
    "peft",
    "transformers",
    "safetensors",
];

/// One Python run: imports every package on its own, then asks torch about CUDA. Prints one
/// JSON object on stdout.
const PROBE: &str = r#"
import importlib, json, platform, sys
out = {"python": platform.python_version(), "implementation": platform.python_implementation(),
       "executable": sys.executable, "packages": {}, "missing": {}}
for name in sys.argv[1:]:
    try:
        m = importlib.import_module(name)
        out["packages"][name] = str(getattr(m, "__version__", "?"))
        if name == "loraforge_trainer":
            out["trainer_path"] = getattr(m, "__file__", None)
    except BaseException as e:
        out["missing"][name] = (type(e).__name__ + ": " + str(e))[:300]
if "torch" in out["packages"]:
    import torch
    try:
        out["cuda"] = bool(torch.cuda.is_available())
        out["cuda_version"] = torch.version.cuda
        out["devices"] = []
        if out["cuda"]:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                out["devices"].append({"name": p.name, "memory_bytes": int(p.total_memory)})
    except BaseException as e:
        out["cuda"] = False
        out["cuda_error"] = (type(e).__name__ + ": " + str(e))[:300]
print(json.dumps(out))
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Level,
    pub detail: String,
    /// What to do about it; absent when nothing needs doing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(
        name: &'static str,
        status: Level,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
            fix,
        }
    }
}

/// What the trainer's interpreter said about itself.
#[derive(Debug, Clone)]
pub struct Probe {
    pub runtime: TrainerRuntime,
    /// The probe's JSON.
    pub report: Value,
}

impl Probe {
    pub fn missing(&self) -> Vec<(String, String)> {
        TRAINER_PACKAGES
            .iter()
            .filter_map(|name| {
                let why = self.report["missing"].get(*name)?;
                Some((
                    (*name).to_owned(),
                    why.as_str().unwrap_or_default().to_owned(),
                ))
            })
            .collect()
    }

    /// `python 3.11.7, loraforge_trainer 0.1.0, torch 2.15.0, …`
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "Python {}",
            self.report["python"].as_str().unwrap_or("?")
        )];
        for name in TRAINER_PACKAGES {
            if let Some(v) = self.report["packages"][name].as_str() {
                parts.push(format!("{name} {v}"));
            }
        }
        parts.join(", ")
    }
}

/// Runs the probe with the trainer's interpreter and environment.
pub async fn probe(runtime: &TrainerRuntime) -> anyhow::Result<Probe> {
    let mut cmd = tokio::process::Command::new(&runtime.python);
    cmd.arg("-c").arg(PROBE).args(TRAINER_PACKAGES);
    cmd.envs(runtime.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", runtime.python.display()))?;
    let out = tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{} did not answer within {} s",
                runtime.python.display(),
                PROBE_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("running {}", runtime.python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    match line.and_then(|l| serde_json::from_str::<Value>(l).ok()) {
        Some(report) if out.status.success() => Ok(Probe {
            runtime: runtime.clone(),
            report,
        }),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            anyhow::bail!(
                "{} is not a working Python ({}): {}",
                runtime.python.display(),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}

/// The trainer check, as `doctor` and `setup-trainer` report it. Returns the probe when it ran.
pub async fn check_trainer(settings: &Settings) -> (Check, Option<Probe>) {
    let using_env = settings.trainer_python.is_some();
    let fix_env = if using_env {
        "install the packages of trainer/requirements.lock into that interpreter (pip install --no-deps -r \
         requirements.lock), or unset LORAFORGE_TRAINER_PYTHON and run `loraforge setup-trainer`"
            .to_owned()
    } else {
        "run `loraforge setup-trainer --force` to rebuild the environment".to_owned()
    };
    let runtime = match trainer_env::runtime(settings) {
        Ok(rt) => rt,
        Err(e) => {
            let fix = if using_env {
                "fix LORAFORGE_TRAINER_PYTHON, or unset it and run `loraforge setup-trainer`"
            } else {
                "run `loraforge setup-trainer` (same --data-dir), or set LORAFORGE_TRAINER_PYTHON"
            };
            return (
                Check::new(
                    "trainer",
                    Level::Fail,
                    format!("{e:#}"),
                    Some(fix.to_owned()),
                ),
                None,
            );
        }
    };
    let probe = match probe(&runtime).await {
        Ok(p) => p,
        Err(e) => {
            return (
                Check::new("trainer", Level::Fail, format!("{e:#}"), Some(fix_env)),
                None,
            );
        }
    };
    let missing = probe.missing();
    let where_ = format!("{} ({})", runtime.python.display(), probe.summary());
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|(k, e)| format!("{k} ({e})")).collect();
        let check = Check::new(
            "trainer",
            Level::Fail,
            format!("{where_}; cannot import {}", list.join(", ")),
            Some(fix_env),
        );
        return (check, Some(probe));
    }
    if probe.report["implementation"]
        .as_str()
        .is_some_and(|i| i != "CPython")
    {
        let detail = format!(
            "{where_}; the trainer is pinned for CPython, this is {}",
            probe.report["implementation"]
        );
        return (
            Check::new(
                "trainer",
                Level::Warn,
                detail,
                Some("use CPython 3.11+".to_owned()),
            ),
            Some(probe),
        );
    }
    if !using_env && !stamp_matches(settings, &probe) {
        let detail =
            format!("{where_}; the venv was not built from this binary's requirements.lock");
        let fix = "run `loraforge setup-trainer` to update it".to_owned();
        return (
            Check::new("trainer", Level::Warn, detail, Some(fix)),
            Some(probe),
        );
    }
    (Check::new("trainer", Level::Ok, where_, None), Some(probe))
}

/// Whether the venv's stamp is the one `setup-trainer` writes for the embedded lock and this
/// Python version.
fn stamp_matches(settings: &Settings, probe: &Probe) -> bool {
    let stamp = std::fs::read_to_string(
        settings
            .trainer_venv()
            .join(super::setup_trainer::STAMP_FILE),
    )
    .unwrap_or_default();
    let version = format!(
        "Python {}\n",
        probe.report["python"].as_str().unwrap_or_default()
    );
    stamp.trim() == super::setup_trainer::stamp(trainer_env::REQUIREMENTS_LOCK.as_bytes(), &version)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// A GPU: from torch when it ran, else whether `nvidia-smi` sees one.
async fn check_gpu(probe: Option<&Probe>) -> Check {
    let cpu_note = "training runs on the CPU, very slowly";
    if let Some(p) = probe
        && p.report["packages"].get("torch").is_some()
    {
        let devices = p.report["devices"].as_array().cloned().unwrap_or_default();
        if p.report["cuda"].as_bool() == Some(true) && !devices.is_empty() {
            let names: Vec<String> = devices
                .iter()
                .map(|d| {
                    format!(
                        "{} ({})",
                        d["name"].as_str().unwrap_or("?"),
                        gib(d["memory_bytes"].as_u64().unwrap_or(0))
                    )
                })
                .collect();
            let cuda = p.report["cuda_version"]
                .as_str()
                .map(|v| format!(", CUDA {v}"))
                .unwrap_or_default();
            return Check::new(
                "gpu",
                Level::Ok,
                format!("{}{cuda}", names.join(", ")),
                None,
            );
        }
        let why = p.report["cuda_error"]
            .as_str()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return match nvidia_smi().await {
            Some(gpus) => Check::new(
                "gpu",
                Level::Warn,
                format!("nvidia-smi sees {gpus}, but torch cannot use it{why}; {cpu_note}"),
                Some(format!(
                    "update the NVIDIA driver to one that supports CUDA {} (torch was built for it)",
                    p.report["cuda_version"].as_str().unwrap_or("?")
                )),
            ),
            None => Check::new(
                "gpu",
                Level::Warn,
                format!("torch sees no CUDA GPU{why}; {cpu_note}"),
                Some("train on a host with an NVIDIA GPU and its driver for real work".to_owned()),
            ),
        };
    }
    match nvidia_smi().await {
        Some(gpus) => Check::new(
            "gpu",
            Level::Warn,
            format!("nvidia-smi sees {gpus} (torch was not checked: the trainer failed)"),
            None,
        ),
        None => Check::new(
            "gpu",
            Level::Warn,
            format!("no NVIDIA GPU found (no working nvidia-smi); {cpu_note}"),
            Some("train on a host with an NVIDIA GPU and its driver for real work".to_owned()),
        ),
    }
}

/// `name (memory)` of each GPU nvidia-smi lists, or None when it is absent or fails.
async fn nvidia_smi() -> Option<String> {
    let mut cmd = tokio::process::Command::new("nvidia-smi");
    cmd.args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let gpus: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once(',') {
            Some((name, mem)) => format!("{} ({})", name.trim(), mem.trim()),
            None => l.trim().to_owned(),
        })
        .collect();
    (!gpus.is_empty()).then(|| gpus.join(", "))
}

async fn check_storage(settings: &Settings) -> Check {
    let fix = "check storage_url and the s3_* settings (`loraforge config`), the folder's permissions or the \
               bucket's credentials"
        .to_owned();
    let result = tokio::time::timeout(SERVICE_TIMEOUT, async {
        let secret = settings.jwt_secret()?;
        let storage = compose::storage_settings(settings, &secret)?;
        let store = loraforge_storage::open(&storage).context("opening storage")?;
        store.ping().await.context("pinging storage")?;
        anyhow::Ok(())
    })
    .await;
    let describe = storage_description(settings);
    match result {
        Ok(Ok(())) => Check::new("storage", Level::Ok, describe, None),
        Ok(Err(e)) => Check::new(
            "storage",
            Level::Fail,
            format!("{describe}: {e:#}"),
            Some(fix),
        ),
        Err(_) => Check::new(
            "storage",
            Level::Fail,
            format!(
                "{describe}: no answer within {} s",
                SERVICE_TIMEOUT.as_secs()
            ),
            Some(fix),
        ),
    }
}

fn storage_description(settings: &Settings) -> String {
    settings.storage_url.clone().unwrap_or_else(|| {
        format!(
            "file://{}",
            crate::settings::absolute(&settings.data_dir.join("blobs")).display()
        )
    })
}

async fn check_database(settings: &Settings) -> Check {
    let describe = loraforge_db::redact_url(&settings.database_url());
    let fix =
        "check database_url (`loraforge config`): is the server up, and may this user connect?"
            .to_owned();
    let result = tokio::time::timeout(SERVICE_TIMEOUT, async {
        let repo = compose::repository(settings).await?;
        repo.ping().await.context("pinging the database")?;
        anyhow::Ok(())
    })
    .await;
    match result {
        Ok(Ok(())) => Check::new("database", Level::Ok, describe, None),
        Ok(Err(e)) => Check::new(
            "database",
            Level::Fail,
            format!("{describe}: {e:#}"),
            Some(fix),
        ),
        Err(_) => Check::new(
            "database",
            Level::Fail,
            format!(
                "{describe}: no answer within {} s",
                SERVICE_TIMEOUT.as_secs()
            ),
            Some(fix),
        ),
    }
}

/// Runs every check, prints them, returns the exit status.
pub async fn run(settings: &Settings, json_out: bool) -> i32 {
    let (trainer, probe) = check_trainer(settings).await;
    let gpu = check_gpu(probe.as_ref()).await;
    let storage = check_storage(settings).await;
    let database = check_database(settings).await;
    let checks = [trainer, gpu, storage, database];
    // A GPU is optional; everything else must at least be usable.
    let ready = checks.iter().all(|c| c.status != Level::Fail);
    if json_out {
        let body = json!({
            "ready": ready,
            "checks": checks,
            "trainer": probe.as_ref().map(|p| json!({
                "python": p.runtime.python,
                "pythonpath": p.runtime.source_root(),
                "report": p.report,
            })),
        });
        println!("{body}");
    } else {
        for c in &checks {
            println!("{:<4}  {:<8}  {}", c.status.label(), c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("{:<4}  {:<8}  → {fix}", "", "");
            }
        }
        println!();
        if ready {
            let gpu_note = if checks[1].status == Level::Ok {
                ""
            } else {
                " (on the CPU: no usable GPU)"
            };
            println!("ready: this host can run loraforge and train{gpu_note}");
        } else {
            let failed: Vec<&str> = checks
                .iter()
                .filter(|c| c.status == Level::Fail)
                .map(|c| c.name)
                .collect();
            println!(
                "not ready: {} failed; see the lines marked FAIL",
                failed.join(", ")
            );
        }
    }
    if ready { 0 } else { 1 }
}
