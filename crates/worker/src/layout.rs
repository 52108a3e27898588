//! The job folder (`--out`): where the worker puts images, the spec, the trainer's outputs and
//! `result.json`, what an earlier attempt kept, and what is removed when an attempt ends.

use std::path::{Path, PathBuf};

use crate::exit;
use crate::files;
use crate::job::Kept;

/// The folder's layout.
pub(crate) struct Layout {
    pub(crate) out: PathBuf,
    pub(crate) images: PathBuf,
    pub(crate) train: PathBuf,
    pub(crate) spec: PathBuf,
    pub(crate) result: PathBuf,
}

impl Layout {
    pub(crate) fn new(out: &Path) -> Self {
        Layout {
            out: out.to_owned(),
            images: out.join("images"),
            train: out.join("train"),
            spec: out.join("trainer-spec.json"),
            result: out.join("result.json"),
        }
    }

    pub(crate) fn model(&self) -> PathBuf {
        self.train.join("model.safetensors")
    }

    pub(crate) fn kohya(&self) -> PathBuf {
        self.train.join("model.kohya.safetensors")
    }

    pub(crate) fn validation(&self, i: usize) -> PathBuf {
        self.train.join("validation").join(format!("{i}.png"))
    }
}

/// The kept outcome of an earlier attempt, if `result.json` and both model files are there.
pub(crate) async fn load_kept(layout: &Layout) -> Option<Kept> {
    let bytes = match tokio::fs::read(&layout.result).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read result.json of an earlier attempt; training again");
            return None;
        }
    };
    match serde_json::from_slice::<Kept>(&bytes) {
        Ok(kept) if layout.model().is_file() && layout.kohya().is_file() => Some(kept),
        Ok(_) => {
            tracing::warn!(
                "result.json of an earlier attempt is there but its model files are not; training again"
            );
            let _ = tokio::fs::remove_file(&layout.result).await;
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "result.json of an earlier attempt does not parse; training again");
            let _ = tokio::fs::remove_file(&layout.result).await;
            None
        }
    }
}

/// Scratch space (`docs/worker-protocol.md`): `images/` always goes; the whole folder goes after
/// exit 0 and 1–5 and stays after 10–13. Only what the worker and the trainer put there is
/// removed, then the folder if that left it empty: a mistaken `--out` never loses other files.
pub(crate) async fn cleanup(out: &Path, code: i32) {
    let layout = Layout::new(out);
    files::remove_tree(&layout.images).await;
    if code == exit::OK || (1..=5).contains(&code) {
        files::remove_tree(&layout.train).await;
        for file in [&layout.spec, &layout.result] {
            for path in [
                file.clone(),
                PathBuf::from(format!("{}.tmp", file.display())),
            ] {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove"),
                }
            }
        }
        match tokio::fs::remove_dir(out).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(out = %out.display(), error = %e, "the job folder holds other files; kept")
            }
        }
    }
}
