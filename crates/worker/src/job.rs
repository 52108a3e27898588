//! The wire format of `docs/worker-protocol.md`: the job the control plane hands out and the
//! bodies the worker posts back.
//!
//! Types holding signed URLs have no `Debug`: a signed URL is a credential and must not end up
//! in a log line by accident.

use serde::{Deserialize, Serialize};

/// `GET /api/v1/worker/jobs/{lora_id}`.
#[derive(Deserialize)]
pub(crate) struct Job {
    pub attempt: u64,
    pub trainer_spec: serde_json::Value,
    pub images: Vec<ImageRef>,
    pub uploads: Uploads,
    /// Where checkpoints go and the one to resume from (absent from older control planes).
    #[serde(default)]
    pub checkpoint: Option<CheckpointPlan>,
    #[serde(default = "default_heartbeat_interval_s")]
    pub heartbeat_interval_s: f64,
    #[serde(default = "default_progress_interval_ms")]
    pub progress_interval_ms: u64,
    /// A signed GET link to a zip of the job's images and captions, for a provider that fetches
    /// the dataset itself (absent from older control planes).
    #[serde(default)]
    pub dataset_zip: Option<String>,
}

fn default_heartbeat_interval_s() -> f64 {
    10.0
}

fn default_progress_interval_ms() -> u64 {
    1000
}

#[derive(Deserialize)]
pub(crate) struct ImageRef {
    pub file_name: String,
    pub url: String,
    pub bytes: u64,
    #[serde(default)]
    pub caption: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Uploads {
    pub model: Upload,
    pub kohya: Upload,
    #[serde(default)]
    pub validation: Vec<Upload>,
}

#[derive(Deserialize)]
pub(crate) struct CheckpointPlan {
    pub upload: Upload,
    #[serde(default)]
    pub resume: Option<ResumeFrom>,
}

#[derive(Deserialize)]
pub(crate) struct ResumeFrom {
    pub url: String,
    pub step: u64,
    pub bytes: u64,
}

/// `POST …/checkpoint`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CheckpointBody {
    pub attempt: u64,
    pub step: u64,
    pub bytes: u64,
}

#[derive(Deserialize)]
pub(crate) struct Upload {
    pub key: String,
    pub url: String,
}

/// `POST …/progress`. Every field but `attempt` is optional; only `attempt` is a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ProgressBody {
    pub attempt: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
}

impl ProgressBody {
    pub fn heartbeat(attempt: u64) -> Self {
        Self {
            attempt,
            stage: None,
            step: None,
            total: None,
            loss: None,
            eta_s: None,
        }
    }
}

/// `POST …/failure`: how an attempt ended when it did not train.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailureBody {
    pub attempt: u64,
    /// A code of the outcome table (`loraforge_domain::outcome`).
    pub code: String,
    pub reason: Option<String>,
    /// The reporter says the failure may pass.
    pub retryable: bool,
}

/// The answer to a result: `{"status": "completed" | "validating" | "failed", "error": …}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ResultAnswer {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// What the worker keeps in `--out/result.json` after the trainer exited 0, so that a later
/// attempt whose uploads failed can skip training: the trainer's `done` and `validation` lines
/// and how long the trainer ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Kept {
    /// The attempt that trained.
    pub attempt: u64,
    pub trainer_seconds: f64,
    pub done: serde_json::Value,
    #[serde(default)]
    pub validation: Option<serde_json::Value>,
}

impl Kept {
    pub fn train_seconds(&self) -> Option<f64> {
        self.done
            .get("train_seconds")
            .and_then(serde_json::Value::as_f64)
    }

    /// The step the trainer resumed from (its `done` line's `resumed_from`).
    pub fn resumed_from(&self) -> Option<u64> {
        self.done
            .get("resumed_from")
            .and_then(serde_json::Value::as_u64)
    }

    /// The scores of the trainer's `validation` event (`None` without a scoring model). The
    /// trainer writes a non-finite score as `null`; such an image did not score, so it counts as
    /// 0 (below any threshold) rather than making the whole list unscored, which would let it
    /// through to review or auto-approval.
    pub fn scores(&self) -> Option<Vec<f64>> {
        let scores = self.validation.as_ref()?.get("scores")?.as_array()?;
        Some(
            scores
                .iter()
                .map(|s| {
                    s.as_f64().unwrap_or_else(|| {
                        tracing::warn!(score = %s, "a validation image has no finite score; reporting 0");
                        0.0
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_job_parses() {
        let job: Job = serde_json::from_value(json!({
            "lora_id": "0193", "attempt": 2,
            "trainer_spec": {"job_id": "0193", "steps": 10},
            "images": [{"file_name": "00.png", "url": "http://x/files/a?sig=s", "bytes": 1234, "caption": "zxq, a photo"}],
            "uploads": {
                "model": {"key": "m", "url": "http://x/m"},
                "kohya": {"key": "k", "url": "http://x/k"},
                "validation": [{"key": "v0", "url": "http://x/v0"}]
            },
            "heartbeat_interval_s": 10,
            "progress_interval_ms": 1000
        }))
        .unwrap();
        assert_eq!(job.attempt, 2);
        assert_eq!(job.images[0].caption.as_deref(), Some("zxq, a photo"));
        assert_eq!(job.uploads.validation.len(), 1);
        assert_eq!(
            (job.heartbeat_interval_s, job.progress_interval_ms),
            (10.0, 1000)
        );
    }

    #[test]
    fn a_heartbeat_is_only_the_attempt() {
        assert_eq!(
            serde_json::to_value(ProgressBody::heartbeat(3)).unwrap(),
            json!({"attempt": 3})
        );
    }

    #[test]
    fn kept_reads_scores_and_train_seconds() {
        let kept = Kept {
            attempt: 1,
            trainer_seconds: 2.0,
            done: json!({"event": "done", "train_seconds": 4.1}),
            validation: Some(json!({"event": "validation", "scores": [0.9, null, 0.4]})),
        };
        assert_eq!(kept.train_seconds(), Some(4.1));
        assert_eq!(kept.scores(), Some(vec![0.9, 0.0, 0.4]));
        let unscored = Kept {
            validation: Some(json!({"scores": null})),
            ..kept.clone()
        };
        assert_eq!(unscored.scores(), None);
        assert_eq!(
            Kept {
                validation: None,
                ..kept
            }
            .scores(),
            None
        );
    }
}
