//! Shared set-up: the fake ai-toolkit, the trainer's interpreter, the tiny model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use loraforge_aitoolkit::{AiToolkitClient, ClientSettings};
use loraforge_fakes::aitoolkit::{FakeAiToolkit, ToolkitConfig, ToolkitTrainer};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The trainer venv's interpreter (`scripts/trainer-env.sh`), or LORAFORGE_TEST_TRAINER_PYTHON.
pub fn trainer_python() -> PathBuf {
    if let Some(p) = std::env::var_os("LORAFORGE_TEST_TRAINER_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let cache = std::env::var_os("LORAFORGE_CACHE")
        .map_or_else(|| Path::new(&home).join(".cache/loraforge"), PathBuf::from);
    let python = cache.join("venv-trainer/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/trainer-env.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

pub fn trainer_env() -> Vec<(String, String)> {
    vec![
        (
            "PYTHONPATH".into(),
            repo_root().join("trainer").display().to_string(),
        ),
        ("HF_HUB_OFFLINE".into(), "1".into()),
        ("OMP_NUM_THREADS".into(), "1".into()),
        ("LORAFORGE_TORCH_THREADS".into(), "1".into()),
    ]
}

/// The tiny SDXL-shaped pipeline, built once per test binary.
pub fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let model = dir.path().join("tiny-sdxl");
            let out = std::process::Command::new(trainer_python())
                .args(["-m", "loraforge_trainer.testing", "tiny-sdxl"])
                .arg(&model)
                .envs(trainer_env())
                .output()
                .expect("run python");
            assert!(
                out.status.success(),
                "building the tiny model failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (dir, model)
        })
        .1
}

pub fn trainer() -> ToolkitTrainer {
    ToolkitTrainer {
        program: trainer_python(),
        args: vec!["-m".into(), "loraforge_trainer".into()],
        env: trainer_env(),
    }
}

pub async fn fake(
    root: &Path,
    auth: Option<&str>,
    trainer: Option<ToolkitTrainer>,
) -> FakeAiToolkit {
    let mut config = ToolkitConfig::new(root);
    config.auth = auth.map(str::to_owned);
    config.trainer = trainer;
    config.tick = Duration::from_millis(20);
    config.kill_grace = Duration::from_secs(2);
    FakeAiToolkit::start(config, 0)
        .await
        .expect("fake ai-toolkit")
}

pub fn client(url: &str, token: Option<&str>) -> AiToolkitClient {
    let mut s = ClientSettings::new(url.parse().unwrap(), token.map(|t| t.to_owned().into()));
    s.retry_delay = Duration::from_millis(10);
    s.timeout = Duration::from_secs(10);
    AiToolkitClient::new(s).unwrap()
}

/// Polls `f` every 20 ms until it is true or `limit` passed.
pub async fn wait_for(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
