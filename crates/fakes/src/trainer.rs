//! The trainer as tests and benches run it: its venv's interpreter, its environment (our
//! sources, offline, one torch thread) and the tiny SDXL-shaped model built at test time (no
//! weights from the internet). Test support, shared by every crate's end-to-end tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The checkout's root (the trainer's sources are under `trainer/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The trainer's venv interpreter (`scripts/trainer-env.sh` builds it; `scripts/test.sh` runs
/// that first), or LORAFORGE_TEST_TRAINER_PYTHON. Missing, the test fails and says so.
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

/// The environment the trainer runs with in tests: our sources, offline, one torch thread.
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
