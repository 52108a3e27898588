//! What an attempt leaves: the finished trainer run judged ([`trained`], which writes
//! `result.json` when it trained), its outputs uploaded to their signed URLs ([`upload_all`]),
//! and the result body posted to the control plane ([`result_body`]).

use std::path::PathBuf;
use std::time::Duration;

use loraforge_domain::{FileFacts, RunResult, ValidationFacts};

use crate::api::{Failed, retrying};
use crate::exit;
use crate::files;
use crate::halt::Exit;
use crate::job::{Kept, Uploads};
use crate::layout::Layout;
use crate::trainer::{Ended, TrainerRun};

/// What a finished trainer run means; writes `result.json` when it trained.
pub(crate) async fn trained(run: TrainerRun, attempt: u64, layout: &Layout) -> Result<Kept, Exit> {
    let TrainerRun {
        ended,
        seconds,
        said,
        stopped_by_worker,
        silent_for,
    } = run;
    if let (Some(silence), false) = (silent_for, ended == Ended::Code(0)) {
        let minutes = silence.as_secs_f64() / 60.0;
        return Err(Exit::error(
            "trainer_silent",
            format!(
                "the trainer wrote nothing for {minutes:.1} min and was taken for hung; it was stopped and a later \
                 attempt resumes from its last checkpoint (if this repeats, check the host: GPU driver, disk, memory)"
            ),
        ));
    }
    match ended {
        Ended::Code(0) => {}
        Ended::Code(exit::STOPPED) => {
            let at = said
                .stopped_at
                .map_or_else(String::new, |s| format!(" at step {s}"));
            let why = if stopped_by_worker {
                "when the worker asked it to"
            } else {
                "on its own request or a signal"
            };
            return Err(Exit::error(
                "stopped",
                format!(
                    "the trainer stopped{at} {why} before finishing; a later attempt resumes from its last checkpoint"
                ),
            ));
        }
        Ended::Signal(sig) => {
            let sig = sig.map_or_else(|| "a signal".to_owned(), |s| format!("signal {s}"));
            return Err(Exit::error(
                "trainer_killed",
                format!(
                    "the trainer was killed by {sig}; a later attempt resumes from its last checkpoint (if this \
                     repeats, check the host's memory and the worker's log)"
                ),
            ));
        }
        Ended::Code(code @ 1..=5) => {
            return Err(match said.last_error {
                Some(line) => Exit::verbatim(code, line),
                None => Exit::error(
                    "trainer_failed",
                    format!(
                        "the trainer exited with code {code} without an error line; its log (stderr) says why"
                    ),
                ),
            });
        }
        Ended::Code(code) => {
            let reason = said
                .last_error
                .as_deref()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
                .map_or_else(String::new, |r| format!(" ({r})"));
            return Err(Exit::error(
                "trainer_failed",
                format!(
                    "the trainer exited with code {code}, which it does not use{reason}; its log (stderr) says why"
                ),
            ));
        }
    }
    let missing = |what: String| {
        Exit::error(
            "missing_output",
            format!("{what}; the trainer's log (stderr) may say why"),
        )
    };
    let Some(done) = said.done else {
        return Err(missing("the trainer exited 0 without its done line".into()));
    };
    for path in [layout.model(), layout.kohya()] {
        if !path.is_file() {
            return Err(missing(format!(
                "the trainer exited 0 but did not write {}",
                path.display()
            )));
        }
    }
    let kept = Kept {
        attempt,
        trainer_seconds: seconds,
        done,
        validation: said.validation,
    };
    let json = serde_json::to_vec_pretty(&kept).expect("JSON values serialize");
    files::write_atomic(&layout.result, &json)
        .await
        .map_err(|e| {
            Exit::error(
                "io_error",
                format!("cannot write {}: {e}", layout.result.display()),
            )
        })?;
    Ok(kept)
}

/// The result body for outputs `kept` and `uploaded` by attempt `attempt`.
pub(crate) fn result_body(attempt: u64, kept: &Kept, uploaded: Uploaded) -> RunResult {
    RunResult {
        attempt,
        train_seconds: kept.train_seconds(),
        trainer_seconds: Some(kept.trainer_seconds),
        model: uploaded.model,
        kohya: Some(uploaded.kohya),
        validation: ValidationFacts {
            images: uploaded.validation_images,
            scores: kept.scores(),
        },
        resumed_from: kept.resumed_from(),
    }
}

pub(crate) struct Uploaded {
    model: FileFacts,
    kohya: FileFacts,
    validation_images: usize,
}

/// Uploads the model files and the validation images there are, each with retries.
pub(crate) async fn upload_all(
    http: &reqwest::Client,
    uploads: &Uploads,
    layout: &Layout,
    delay: Duration,
) -> Result<Uploaded, Exit> {
    let kept_note = format!(
        "the trained files are kept in {} and the next attempt uploads them without training again",
        layout.out.display()
    );
    let summary = |path: PathBuf| {
        let kept_note = kept_note.clone();
        async move {
            files::size_and_sha256(&path)
                .await
                .map(|(bytes, sha256)| FileFacts {
                    bytes,
                    sha256: Some(sha256),
                })
                .map_err(|e| {
                    Exit::error(
                        "upload_failed",
                        format!("cannot read {}: {e}; {kept_note}", path.display()),
                    )
                })
        }
    };
    let model = summary(layout.model()).await?;
    let kohya = summary(layout.kohya()).await?;

    let mut list = vec![
        (layout.model(), &uploads.model),
        (layout.kohya(), &uploads.kohya),
    ];
    let mut validation_images = 0;
    for (i, upload) in uploads.validation.iter().enumerate() {
        let path = layout.validation(i);
        if path.is_file() {
            list.push((path, upload));
            validation_images += 1;
        }
    }
    for (path, upload) in list {
        let name = path
            .strip_prefix(&layout.train)
            .unwrap_or(&path)
            .display()
            .to_string();
        let url = url::Url::parse(&upload.url).map_err(|e| {
            Exit::error(
                "upload_failed",
                format!(
                    "the job's upload link for {name} ({}) is not a URL ({e}); {kept_note}",
                    upload.key
                ),
            )
        })?;
        tracing::info!(file = %name, key = %upload.key, "uploading");
        retrying(&format!("uploading {name}"), delay, || {
            files::put_file(http, &url, &path)
        })
        .await
        .map_err(|Failed { error, tries }| {
            Exit::error(
                "upload_failed",
                format!(
                    "uploading {name} to {} failed: {error} ({tries} tries); {kept_note}",
                    upload.key
                ),
            )
        })?;
    }
    Ok(Uploaded {
        model,
        kohya,
        validation_images,
    })
}
