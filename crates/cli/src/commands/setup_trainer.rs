//! `loraforge setup-trainer`: builds the trainer's Python environment once, pinned and cached.
//!
//! The venv at `trainer_venv` (default `<data_dir>/trainer-venv`) gets exactly the packages of
//! the `requirements.lock` compiled into this binary, installed the way `scripts/trainer-env.sh`
//! does (`pip install --disable-pip-version-check --no-input --no-deps -r LOCK`). It is built
//! in `<venv>.partial` and renamed into place at the end, after the stamp (a hash of the lock
//! and the Python version) was written: a venv under its final name is always complete, and an
//! interrupted setup is simply redone. A later run whose stamp matches does nothing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::settings::Settings;
use crate::trainer_env::{self, REQUIREMENTS_LOCK, venv_python};

use super::doctor::{self, Level};

/// The stamp file inside the venv (the same name `scripts/pinned-venv.sh` uses).
pub const STAMP_FILE: &str = ".loraforge-pins";

/// The oldest Python the trainer supports.
const MIN_PYTHON: (u32, u32) = (3, 11);

/// The stamp of a venv built from `lock` with a Python whose `--version` printed `version`:
/// the SHA-256 of both, as `scripts/pinned-venv.sh` computes it.
pub fn stamp(lock: &[u8], version: &str) -> String {
    let mut h = Sha256::new();
    h.update(lock);
    h.update(version.as_bytes());
    hex::encode(h.finalize())
}

pub struct Options {
    /// Base interpreter for `-m venv`.
    pub python: String,
    /// Rebuild even when the stamp matches.
    pub force: bool,
    /// Install this file instead of the embedded lock.
    pub requirements: Option<PathBuf>,
}

/// Runs the command; returns the exit status.
pub async fn run(settings: &Settings, opts: &Options) -> anyhow::Result<i32> {
    if let Some(python) = &settings.trainer_python {
        return check_existing(settings, python).await;
    }
    let venv = settings.trainer_venv();
    let (lock, lock_name) = match &opts.requirements {
        Some(f) => (
            std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
            f.display().to_string(),
        ),
        None => (
            REQUIREMENTS_LOCK.as_bytes().to_vec(),
            "the requirements.lock built into loraforge".to_owned(),
        ),
    };
    let base = BasePython::find(&opts.python)?;
    let want = stamp(&lock, &base.version_output);

    let parent = venv
        .parent()
        .context("the trainer venv path has no parent folder")?
        .to_owned();
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    // One setup at a time per venv; a second waits, then finds the stamp written.
    let lock_file =
        File::create(sibling(&venv, ".lock")).context("creating the setup lock file")?;
    if lock_file.try_lock().is_err() {
        println!(
            "another `loraforge setup-trainer` is building {}; waiting for it…",
            venv.display()
        );
        lock_file.lock().context("waiting for the setup lock")?;
    }

    let stamp_path = venv.join(STAMP_FILE);
    let current = std::fs::read_to_string(&stamp_path).ok();
    if !opts.force
        && venv_python(&venv).is_file()
        && current.as_deref().map(str::trim) == Some(want.as_str())
    {
        println!(
            "trainer environment up to date: {} (built from {lock_name} with {}); nothing to do",
            venv.display(),
            base.version()
        );
        println!("(--force rebuilds it)");
        finish(settings, &venv)?;
        return Ok(0);
    }

    let packages = count_packages(&lock);
    println!("setting up the trainer's Python environment");
    println!("  venv:         {}", venv.display());
    println!(
        "  interpreter:  {} ({})",
        base.path.display(),
        base.version()
    );
    println!("  packages:     {packages} exact pins from {lock_name}, installed with --no-deps");
    if opts.requirements.is_none() {
        println!(
            "  size:         about 3 GB to download (torch with its CUDA libraries), about 6 GB on disk"
        );
    }
    match (&current, venv.exists()) {
        (_, false) => {}
        (_, true) if opts.force => println!("  rebuilding:   --force"),
        (Some(_), true) => {
            println!("  rebuilding:   the lock or the Python version changed since it was built")
        }
        (None, true) => println!(
            "  rebuilding:   the existing venv has no stamp (not built by setup-trainer, or broken)"
        ),
    }
    println!();

    let partial = sibling(&venv, ".partial");
    remove_dir(&partial)?;
    run_step(
        Command::new(&base.path).arg("-m").arg("venv").arg(&partial),
        "creating the venv",
    )
    .with_context(|| {
        format!(
            "`{} -m venv` failed; on Debian/Ubuntu install python3-venv",
            base.path.display()
        )
    })?;
    let lock_path = partial.join("requirements.lock");
    std::fs::write(&lock_path, &lock)
        .with_context(|| format!("writing {}", lock_path.display()))?;
    println!("installing {packages} packages (pip's output follows)…");
    run_step(
        Command::new(venv_python(&partial))
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-deps", "-r"])
            .arg(&lock_path),
        "pip install",
    )
    .context("installing the pinned packages failed; see pip's output above (network, disk space?) and run it again")?;
    let _ = std::fs::remove_file(&lock_path);
    relocate_scripts(&partial, &venv)?;

    if opts.requirements.is_none() {
        // The same check scripts/trainer-env.sh makes before writing the stamp.
        let mut check = Command::new(venv_python(&partial));
        check.args([
            "-c",
            "import torch, diffusers, transformers, peft, safetensors",
        ]);
        run_step(&mut check, "checking the installed packages import").context(
            "the packages were installed but do not import; run `loraforge setup-trainer --force`",
        )?;
    }

    // The stamp last, then the rename that makes the venv visible.
    std::fs::write(partial.join(STAMP_FILE), format!("{want}\n")).context("writing the stamp")?;
    if venv.exists() {
        let old = sibling(&venv, &format!(".old-{}", std::process::id()));
        std::fs::rename(&venv, &old)
            .with_context(|| format!("moving the old venv {} aside", venv.display()))?;
        remove_dir(&old)?;
    }
    std::fs::rename(&partial, &venv)
        .with_context(|| format!("renaming {} to {}", partial.display(), venv.display()))?;
    println!();
    println!("trainer environment ready: {}", venv.display());
    finish(settings, &venv)?;
    Ok(0)
}

/// The closing lines: the interpreter and how the service uses it.
fn finish(settings: &Settings, venv: &Path) -> anyhow::Result<()> {
    let rt = trainer_env::runtime(settings)?;
    println!("trainer Python: {}", venv_python(venv).display());
    println!("{}; `loraforge doctor` checks it", how_it_runs(&rt));
    Ok(())
}

/// How the service and the worker start the trainer with this runtime.
fn how_it_runs(rt: &trainer_env::TrainerRuntime) -> String {
    format!(
        "loraforge runs the trainer as `{} {} train …` with PYTHONPATH={} (the trainer sources built into this \
         loraforge binary)",
        rt.python.display(),
        trainer_env::trainer_args().join(" "),
        rt.source_root()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    )
}

/// `LORAFORGE_TRAINER_PYTHON` is set: nothing to build; say whether that interpreter works.
async fn check_existing(settings: &Settings, python: &Path) -> anyhow::Result<i32> {
    println!(
        "LORAFORGE_TRAINER_PYTHON is set ({}): not building a venv; checking that interpreter",
        python.display()
    );
    let (check, probe) = doctor::check_trainer(settings).await;
    let mark = match check.status {
        Level::Ok => "ok",
        Level::Warn => "warn",
        Level::Fail => "FAIL",
    };
    println!("{mark}: {}", check.detail);
    if let Some(fix) = &check.fix {
        println!("  → {fix}");
    }
    if check.status == Level::Fail {
        return Ok(1);
    }
    if let Some(p) = probe {
        println!("trainer Python: {}", p.runtime.python.display());
        println!("{}", how_it_runs(&p.runtime));
    }
    Ok(0)
}

/// The interpreter that creates the venv.
struct BasePython {
    path: PathBuf,
    /// What `python --version` printed (hashed into the stamp, like pinned-venv.sh does).
    version_output: String,
}

impl BasePython {
    fn find(python: &str) -> anyhow::Result<Self> {
        let out = Command::new(python)
            .args(["-c", "import platform, sys; print(platform.python_implementation(), sys.version_info[0], sys.version_info[1], sys.executable)"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {python:?}: install CPython {}.{}+ or name one with --python", MIN_PYTHON.0, MIN_PYTHON.1))?;
        if !out.status.success() {
            bail!(
                "{python:?} does not run: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut fields = text.splitn(4, ' ');
        let (imp, major, minor, exe) = (fields.next(), fields.next(), fields.next(), fields.next());
        let (Some(imp), Some(major), Some(minor)) = (
            imp,
            major.and_then(|m| m.parse::<u32>().ok()),
            minor.and_then(|m| m.parse::<u32>().ok()),
        ) else {
            bail!(
                "{python:?} did not answer like a Python interpreter; the trainer needs CPython {}.{} or newer: install it \
                 and pass --python python3.11",
                MIN_PYTHON.0,
                MIN_PYTHON.1
            );
        };
        if imp != "CPython" || (major, minor) < MIN_PYTHON {
            bail!(
                "{python:?} is {imp} {major}.{minor}; the trainer needs CPython {}.{} or newer: install it and pass --python python3.11",
                MIN_PYTHON.0,
                MIN_PYTHON.1
            );
        }
        let ver = Command::new(python)
            .arg("--version")
            .output()
            .with_context(|| format!("running {python:?} --version"))?;
        let mut version_output = String::from_utf8_lossy(&ver.stdout).into_owned();
        version_output.push_str(&String::from_utf8_lossy(&ver.stderr));
        let path = exe
            .filter(|e| !e.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(python));
        Ok(Self {
            path,
            version_output,
        })
    }

    fn version(&self) -> &str {
        self.version_output.trim()
    }
}

fn sibling(venv: &Path, suffix: &str) -> PathBuf {
    let mut name = venv.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    venv.with_file_name(name)
}

fn remove_dir(p: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

/// Runs a step with its output streaming to ours.
fn run_step(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn count_packages(lock: &[u8]) -> usize {
    String::from_utf8_lossy(lock)
        .lines()
        .filter(|l| l.contains("=="))
        .count()
}

/// venvs are not relocatable: the scripts in `bin/` (pip, activate, …) name the folder they were
/// made in. Rewrite `<partial>` to the final path in them before the rename.
fn relocate_scripts(partial: &Path, venv: &Path) -> anyhow::Result<()> {
    let from = partial.to_string_lossy().into_owned();
    let to = venv.to_string_lossy().into_owned();
    let bin = venv_python(partial)
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| partial.join("bin"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&bin)
        .with_context(|| format!("listing {}", bin.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.push(partial.join("pyvenv.cfg"));
    for f in files {
        let Ok(meta) = std::fs::metadata(&f) else {
            continue;
        };
        if meta.len() > 1 << 20 {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if text.contains(&from) {
            std::fs::write(&f, text.replace(&from, &to))
                .with_context(|| format!("rewriting {}", f.display()))?;
        }
    }
    Ok(())
}
