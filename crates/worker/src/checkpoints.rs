//! Checkpoints leave the training host as they are written: the trainer's `checkpoint` lines
//! feed an uploader that PUTs the newest one to the attempt's signed link and tells the control
//! plane (`POST …/checkpoint`), so a later attempt on any host resumes from it. Uploads run
//! beside training and never hold it up; when a newer checkpoint arrives during an upload, only
//! the newest is sent next. At the end of the attempt the last one is given a bounded time to
//! finish (a stop request writes a checkpoint on the way out: that is the one worth keeping).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use url::Url;

use crate::api::{ControlPlane, Failed, retrying};
use crate::files;
use crate::job::{CheckpointBody, ResumeFrom};

/// A checkpoint the trainer wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Saved {
    pub step: u64,
    pub path: PathBuf,
}

pub(crate) struct Uploader {
    tx: watch::Sender<Option<Saved>>,
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl Uploader {
    pub fn start(
        http: reqwest::Client,
        api: Arc<ControlPlane>,
        attempt: u64,
        url: Url,
        retry_delay: Duration,
    ) -> Self {
        let (tx, mut rx) = watch::channel(None::<Saved>);
        let task = tokio::spawn(async move {
            let mut stored = None;
            while rx.changed().await.is_ok() {
                let Some(saved) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let name = format!("checkpoint of step {}", saved.step);
                let bytes = match tokio::fs::metadata(&saved.path).await {
                    Ok(m) => m.len(),
                    Err(e) => {
                        tracing::warn!(path = %saved.path.display(), error = %e, "a checkpoint vanished before its upload");
                        continue;
                    }
                };
                let what = format!("uploading the {name}");
                let put = retrying(&what, retry_delay, || {
                    files::put_file(&http, &url, &saved.path)
                });
                if let Err(Failed { error, tries }) = put.await {
                    tracing::warn!(%error, tries, "the {name} could not be uploaded; training goes on");
                    continue;
                }
                let body = CheckpointBody {
                    attempt,
                    step: saved.step,
                    bytes,
                };
                let what = format!("recording the {name}");
                match retrying(&what, retry_delay, || api.checkpoint(&body)).await {
                    Ok(()) => {
                        tracing::info!(step = saved.step, bytes, "checkpoint stored");
                        stored = Some(saved.step);
                    }
                    Err(Failed { error, tries }) => {
                        tracing::warn!(%error, tries, "the {name} could not be recorded")
                    }
                }
            }
            stored
        });
        Self { tx, task }
    }

    /// Where the trainer's `checkpoint` lines go.
    pub fn sender(&self) -> watch::Sender<Option<Saved>> {
        self.tx.clone()
    }

    /// Lets the newest checkpoint finish uploading, for at most `limit`; returns the step of the
    /// last one stored.
    pub async fn finish(self, limit: Duration) -> Option<u64> {
        let Uploader { tx, mut task } = self;
        drop(tx);
        match tokio::time::timeout(limit, &mut task).await {
            Ok(stored) => stored.ok().flatten(),
            Err(_) => {
                tracing::warn!(
                    ?limit,
                    "the last checkpoint did not finish uploading in time"
                );
                task.abort();
                None
            }
        }
    }
}

/// The checkpoint a newer attempt resumes from, put where the trainer's `--resume` finds it
/// (`<train>/checkpoints/step-NNNNNNNN.pt`), unless a checkpoint at least as new is there already
/// (an earlier attempt on this host).
pub(crate) async fn fetch_resume_point(
    http: &reqwest::Client,
    resume: &ResumeFrom,
    train: &Path,
    retry_delay: Duration,
) -> Result<bool, String> {
    let dir = train.join("checkpoints");
    if newest_local(&dir)
        .await
        .is_some_and(|step| step >= resume.step)
    {
        tracing::info!(
            step = resume.step,
            "a checkpoint at least as new is here already"
        );
        return Ok(false);
    }
    let url =
        Url::parse(&resume.url).map_err(|e| format!("the checkpoint link is not a URL ({e})"))?;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("step-{:08}.pt", resume.step));
    tracing::info!(
        step = resume.step,
        bytes = resume.bytes,
        "downloading the checkpoint to resume from"
    );
    retrying("downloading the checkpoint", retry_delay, || {
        files::download(http, &url, resume.bytes, &path)
    })
    .await
    .map_err(|Failed { error, tries }| format!("{error} ({tries} tries)"))?;
    Ok(true)
}

/// The step of the newest `step-NNNNNNNN.pt` in `dir`.
async fn newest_local(dir: &Path) -> Option<u64> {
    let mut entries = tokio::fs::read_dir(dir).await.ok()?;
    let mut newest = None;
    while let Ok(Some(e)) = entries.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.strip_suffix(".pt"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            newest = newest.max(Some(step));
        }
    }
    newest
}
