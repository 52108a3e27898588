//! How loraforge runs the Python trainer.
//!
//! The trainer's sources (`trainer/loraforge_trainer/*.py`) and its lock file
//! (`trainer/requirements.lock`) are compiled into this binary. [`runtime`] writes the sources
//! once per content hash to `<data_dir>/trainer/<hash16>/loraforge_trainer/` and names an
//! interpreter: `trainer_python` (`LORAFORGE_TRAINER_PYTHON`) or the venv that
//! `loraforge setup-trainer` built (`<trainer_venv>/bin/python`). The interpreter only needs the
//! pinned packages; loraforge itself makes the trainer package importable with `PYTHONPATH`, so
//! the code that runs is always the code this binary was built with.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::settings::{Settings, absolute};

/// The trainer package's files, as compiled into this binary: (file name, contents).
/// A unit test fails when `trainer/loraforge_trainer/` holds a `.py` file missing here.
pub const TRAINER_SOURCES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../trainer/loraforge_trainer/__init__.py"),
    ),
    (
        "__main__.py",
        include_str!("../../../trainer/loraforge_trainer/__main__.py"),
    ),
    (
        "buckets.py",
        include_str!("../../../trainer/loraforge_trainer/buckets.py"),
    ),
    (
        "checkpoint.py",
        include_str!("../../../trainer/loraforge_trainer/checkpoint.py"),
    ),
    (
        "classimages.py",
        include_str!("../../../trainer/loraforge_trainer/classimages.py"),
    ),
    (
        "cli.py",
        include_str!("../../../trainer/loraforge_trainer/cli.py"),
    ),
    (
        "dataset.py",
        include_str!("../../../trainer/loraforge_trainer/dataset.py"),
    ),
    (
        "errors.py",
        include_str!("../../../trainer/loraforge_trainer/errors.py"),
    ),
    (
        "events.py",
        include_str!("../../../trainer/loraforge_trainer/events.py"),
    ),
    (
        "export.py",
        include_str!("../../../trainer/loraforge_trainer/export.py"),
    ),
    (
        "fsutil.py",
        include_str!("../../../trainer/loraforge_trainer/fsutil.py"),
    ),
    (
        "sample.py",
        include_str!("../../../trainer/loraforge_trainer/sample.py"),
    ),
    (
        "spec.py",
        include_str!("../../../trainer/loraforge_trainer/spec.py"),
    ),
    (
        "testing.py",
        include_str!("../../../trainer/loraforge_trainer/testing.py"),
    ),
    (
        "train.py",
        include_str!("../../../trainer/loraforge_trainer/train.py"),
    ),
    (
        "validate.py",
        include_str!("../../../trainer/loraforge_trainer/validate.py"),
    ),
];

/// `trainer/requirements.lock`: every package of the trainer's environment at its exact version.
pub const REQUIREMENTS_LOCK: &str = include_str!("../../../trainer/requirements.lock");

/// The Python package name of the trainer.
pub const PACKAGE: &str = "loraforge_trainer";

/// How to run the trainer: `python` with `env` added to the environment, then
/// [`trainer_args`] and the trainer's own arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainerRuntime {
    /// `trainer_python` (`LORAFORGE_TRAINER_PYTHON`), or `<trainer_venv>/bin/python`.
    pub python: PathBuf,
    /// `PYTHONPATH` (the extracted sources first, then any existing `PYTHONPATH`) and
    /// `PYTHONUNBUFFERED=1`.
    pub env: Vec<(String, String)>,
}

impl TrainerRuntime {
    /// The folder put first on `PYTHONPATH` (it holds `loraforge_trainer/`).
    pub fn source_root(&self) -> Option<PathBuf> {
        let (_, v) = self.env.iter().find(|(k, _)| k == "PYTHONPATH")?;
        std::env::split_paths(v).next()
    }
}

/// The interpreter arguments that run the trainer: `["-m", "loraforge_trainer"]`.
pub fn trainer_args() -> Vec<String> {
    vec!["-m".to_owned(), PACKAGE.to_owned()]
}

/// Extracts the embedded trainer sources (once per content hash) and names the interpreter.
/// Fails when the interpreter does not exist, saying how to get one.
pub fn runtime(settings: &Settings) -> anyhow::Result<TrainerRuntime> {
    let python = interpreter(settings)?;
    let root = extract_sources(&settings.data_dir)?;
    let mut paths: Vec<OsString> = vec![root.into_os_string()];
    if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        paths.extend(std::env::split_paths(&existing).map(PathBuf::into_os_string));
    }
    let pythonpath =
        std::env::join_paths(paths).context("building PYTHONPATH (a path contains ':')")?;
    Ok(TrainerRuntime {
        python,
        env: vec![
            (
                "PYTHONPATH".to_owned(),
                pythonpath.to_string_lossy().into_owned(),
            ),
            ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
        ],
    })
}

/// `<venv>/bin/python` (`Scripts\python.exe` on Windows).
pub fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// The configured interpreter, checked to exist.
fn interpreter(settings: &Settings) -> anyhow::Result<PathBuf> {
    find_interpreter(settings.trainer_python.as_deref(), &settings.trainer_venv())
}

/// The trainer's interpreter: `trainer_python` if set (it must exist), else the venv's.
pub fn find_interpreter(trainer_python: Option<&Path>, venv: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = trainer_python {
        let found = resolve_program(p);
        return match found {
            Some(p) => Ok(p),
            None => bail!(
                "LORAFORGE_TRAINER_PYTHON is {}, which does not exist; point it at a Python that has the trainer's \
                 packages, or unset it and run `loraforge setup-trainer`",
                p.display()
            ),
        };
    }
    let python = venv_python(venv);
    if !python.is_file() {
        bail!(
            "the trainer's Python environment is not set up ({} does not exist); run `loraforge setup-trainer` \
             (with the same --data-dir) or set LORAFORGE_TRAINER_PYTHON to an interpreter that has the trainer's packages",
            python.display()
        );
    }
    Ok(python)
}

/// A path as given (made absolute), or a bare name (`python3`) looked up on `PATH`.
fn resolve_program(p: &Path) -> Option<PathBuf> {
    if p.components().count() == 1 && !p.is_absolute() {
        let path = std::env::var_os("PATH")?;
        return std::env::split_paths(&path)
            .map(|d| d.join(p))
            .find(|c| c.is_file());
    }
    let p = absolute(p);
    p.is_file().then_some(p)
}

/// 16 hex digits of a SHA-256 over the embedded sources (names and contents).
pub fn sources_hash() -> String {
    let mut h = Sha256::new();
    for (name, text) in TRAINER_SOURCES {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())[..16].to_owned()
}

/// Writes the sources to `<data_dir>/trainer/<hash16>/loraforge_trainer/` unless they are there
/// already, and returns `<data_dir>/trainer/<hash16>` (absolute). Atomic: the files are written
/// into a temporary folder that is renamed into place, so a folder under its final name is
/// always complete; concurrent callers each build their own and the first rename wins.
pub fn extract_sources(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let base = absolute(&data_dir.join("trainer"));
    let root = base.join(sources_hash());
    if is_complete(&root) {
        return Ok(root);
    }
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    // A folder under the final name only ever appears complete (by rename), so an incomplete
    // one was damaged by hand: move it aside (atomically) and build it again.
    if root.exists() && !is_complete(&root) {
        let aside = base.join(format!(".broken-{}", unique()));
        if std::fs::rename(&root, &aside).is_ok() {
            let _ = std::fs::remove_dir_all(&aside);
        }
    }
    let tmp = base.join(format!(".tmp-{}", unique()));
    let result = write_tree(&tmp).and_then(|()| match std::fs::rename(&tmp, &root) {
        Ok(()) => Ok(()),
        // Another process renamed its copy into place first: use that one.
        Err(_) if is_complete(&root) => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("moving the trainer sources to {}", root.display()))
        }
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    Ok(root)
}

fn write_tree(tmp: &Path) -> anyhow::Result<()> {
    let pkg = tmp.join(PACKAGE);
    std::fs::create_dir_all(&pkg).with_context(|| format!("creating {}", pkg.display()))?;
    for (name, text) in TRAINER_SOURCES {
        let path = pkg.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn is_complete(root: &Path) -> bool {
    let pkg = root.join(PACKAGE);
    TRAINER_SOURCES.iter().all(|(name, text)| {
        std::fs::metadata(pkg.join(name)).is_ok_and(|m| m.len() == text.len() as u64)
    })
}

fn unique() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trainer_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../trainer")
    }

    #[test]
    fn every_python_file_of_the_trainer_is_embedded() {
        let dir = trainer_dir().join(PACKAGE);
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".py"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = TRAINER_SOURCES
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        embedded.sort();
        assert_eq!(
            on_disk, embedded,
            "trainer/loraforge_trainer/*.py and TRAINER_SOURCES in crates/cli/src/trainer_env.rs differ: add an \
             include_str! line for each new file (and remove deleted ones)"
        );
        for (name, text) in TRAINER_SOURCES {
            assert_eq!(
                std::fs::read_to_string(dir.join(name)).unwrap(),
                *text,
                "{name} is stale; rebuild"
            );
        }
        assert_eq!(
            std::fs::read_to_string(trainer_dir().join("requirements.lock")).unwrap(),
            REQUIREMENTS_LOCK
        );
    }

    #[test]
    fn sources_are_extracted_once_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let root = extract_sources(dir.path()).unwrap();
        assert_eq!(root, dir.path().join("trainer").join(sources_hash()));
        for (name, text) in TRAINER_SOURCES {
            assert_eq!(
                std::fs::read_to_string(root.join(PACKAGE).join(name)).unwrap(),
                *text
            );
        }
        // A second call reuses the folder; a damaged one is rebuilt.
        let marker = root.join(PACKAGE).join("__pycache__");
        std::fs::create_dir(&marker).unwrap();
        assert_eq!(extract_sources(dir.path()).unwrap(), root);
        assert!(marker.exists(), "an existing complete folder is left alone");
        std::fs::remove_file(root.join(PACKAGE).join("cli.py")).unwrap();
        assert_eq!(extract_sources(dir.path()).unwrap(), root);
        assert!(root.join(PACKAGE).join("cli.py").is_file());
        // Nothing temporary is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("trainer"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn concurrent_extractions_agree() {
        let dir = tempfile::tempdir().unwrap();
        let roots: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| extract_sources(dir.path()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(roots.windows(2).all(|w| w[0] == w[1]));
        assert!(is_complete(&roots[0]));
    }

    #[test]
    fn runtime_names_the_interpreter_and_sets_pythonpath() {
        let dir = tempfile::tempdir().unwrap();
        let over = crate::settings::Overrides {
            data_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let mut settings = Settings::load(&over).unwrap();
        settings.trainer_python = None;
        settings.trainer_venv = None;
        let err = runtime(&settings).unwrap_err().to_string();
        assert!(
            err.contains("loraforge setup-trainer") && err.contains("LORAFORGE_TRAINER_PYTHON"),
            "{err}"
        );

        let venv = dir.path().join("trainer-venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv_python(&venv), "").unwrap();
        let rt = runtime(&settings).unwrap();
        assert_eq!(rt.python, venv_python(&venv));
        let root = rt.source_root().unwrap();
        assert_eq!(root, dir.path().join("trainer").join(sources_hash()));
        assert!(root.join(PACKAGE).join("__main__.py").is_file());
        assert!(
            rt.env
                .contains(&("PYTHONUNBUFFERED".to_owned(), "1".to_owned()))
        );

        settings.trainer_python = Some(dir.path().join("nonexistent-python"));
        let err = runtime(&settings).unwrap_err().to_string();
        assert!(
            err.contains("LORAFORGE_TRAINER_PYTHON") && err.contains("setup-trainer"),
            "{err}"
        );
        settings.trainer_python = Some(venv_python(&venv));
        assert_eq!(runtime(&settings).unwrap().python, venv_python(&venv));
    }

    #[test]
    fn trainer_args_run_the_package() {
        assert_eq!(trainer_args(), ["-m", "loraforge_trainer"]);
    }
}
