//! A training run: one attempt of a LoRA's training job on one backend, kept as a durable
//! record (`training_runs`): where it ran, what it cost, how it ended and whether its instance
//! is confirmed gone.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::outcome::{self, Disposition};
use crate::{LoraId, MicroUsd, RunId, SampleBatchId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRun {
    pub id: RunId,
    pub lora_id: LoraId,
    /// 1 for the first run of the job, 2 for the next, …
    pub attempt: u32,
    pub backend: String,
    /// Why the router chose this backend ("runpod: first in order", "local, after runpod:
    /// circuit breaker open; …"); `None` on runs recorded before routing was recorded.
    #[serde(default)]
    pub route_reason: Option<String>,
    /// The engine (its worker id) that started the run and watches it.
    pub engine: String,
    /// The instance's name at the provider: a fixed prefix, the LoRA id and the attempt.
    pub instance_name: String,
    /// The backend's handle on the run (pod id, serverless job id, local process).
    pub provider_id: String,
    pub gpu_type: Option<String>,
    pub price_per_hour: Option<MicroUsd>,
    /// Just before the backend was asked for the instance.
    pub created_at: DateTime<Utc>,
    /// When the backend had accepted it.
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// A code of `domain::outcome`, once known; the first report wins.
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// The worker's report with a `trained` outcome.
    pub result: Option<serde_json::Value>,
    /// When the job acted on the outcome.
    pub settled_at: Option<DateTime<Utc>>,
    pub cost: Option<MicroUsd>,
    /// When the backend confirmed the instance is gone.
    pub instance_gone_at: Option<DateTime<Utc>>,
    pub terminate_failures: u32,
    /// When the next try to end the instance is due, after a failed one.
    pub next_terminate_at: Option<DateTime<Utc>>,
}

impl TrainingRun {
    /// What the recorded outcome means for the job; `None` while the run has not ended.
    pub fn disposition(&self) -> Option<Disposition> {
        let code = self.outcome.as_deref()?;
        let retryable = self
            .result
            .as_ref()
            .and_then(|r| r.get("retryable"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Some(outcome::disposition(code, retryable))
    }

    /// The outcome as people read it.
    pub fn message(&self) -> Option<String> {
        self.outcome
            .as_deref()
            .map(|c| outcome::describe(c, self.reason.as_deref()))
    }

    pub fn is_instance_gone(&self) -> bool {
        self.instance_gone_at.is_some()
    }
}

/// What a worker reports with a trained run (`POST /api/v1/worker/jobs/{id}/result`), kept on
/// the run record and read by the after-training steps. The one definition of that body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunResult {
    pub attempt: u64,
    /// Seconds of the training loop itself.
    #[serde(default)]
    pub train_seconds: Option<f64>,
    /// Seconds the trainer process ran.
    #[serde(default)]
    pub trainer_seconds: Option<f64>,
    pub model: FileFacts,
    #[serde(default)]
    pub kohya: Option<FileFacts>,
    pub validation: ValidationFacts,
    /// The step the trainer resumed from (0: a fresh start).
    #[serde(default)]
    pub resumed_from: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileFacts {
    pub bytes: u64,
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ValidationFacts {
    /// Validation images uploaded (3 normally).
    pub images: usize,
    /// CLIP similarity per image; `None` without a scoring model.
    #[serde(default)]
    pub scores: Option<Vec<f64>>,
}

/// Who an instance of this service works for, as its name says ([`parse_instance_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceOwner {
    /// Attempt `attempt` of the training job of `lora` ([`instance_name`]).
    Run { lora: LoraId, attempt: u32 },
    /// Attempt `attempt` of sample batch `batch` ([`sample_instance_name`]).
    Sample { batch: SampleBatchId, attempt: u32 },
}

/// What follows the prefix in a sample attempt's name. Never the start of a LoRA id (a UUID), so
/// the two kinds of names cannot be mistaken for each other.
const SAMPLE_MARK: &str = "sample-";

/// The instance name of attempt `attempt` of `lora` under `prefix` (`loraforge-{lora}-{attempt}`):
/// the orphan sweep reads them back with [`parse_instance_name`].
pub fn instance_name(prefix: &str, lora: LoraId, attempt: u32) -> String {
    format!("{prefix}{lora}-{attempt}")
}

/// The instance name of attempt `attempt` of sample batch `batch` under `prefix`
/// (`loraforge-sample-{batch}-{attempt}`), read back by [`parse_instance_name`].
pub fn sample_instance_name(prefix: &str, batch: SampleBatchId, attempt: u32) -> String {
    format!("{prefix}{SAMPLE_MARK}{batch}-{attempt}")
}

/// Whose instance a name made by [`instance_name`] or [`sample_instance_name`] with `prefix`
/// is; `None` for any other name (another service's, or one of ours made by hand).
pub fn parse_instance_name(prefix: &str, name: &str) -> Option<InstanceOwner> {
    let rest = name.strip_prefix(prefix)?;
    let (id, attempt) = rest.rsplit_once('-')?;
    if attempt.is_empty() || !attempt.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let attempt = attempt.parse().ok()?;
    Some(match id.strip_prefix(SAMPLE_MARK) {
        Some(batch) => InstanceOwner::Sample {
            batch: batch.parse().ok()?,
            attempt,
        },
        None => InstanceOwner::Run {
            lora: id.parse().ok()?,
            attempt,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_round_trip() {
        let lora = LoraId::new();
        let name = instance_name("loraforge-", lora, 3);
        assert_eq!(name, format!("loraforge-{lora}-3"));
        assert_eq!(
            parse_instance_name("loraforge-", &name),
            Some(InstanceOwner::Run { lora, attempt: 3 })
        );
        assert_eq!(parse_instance_name("other-", &name), None);
        assert_eq!(parse_instance_name("loraforge-", "loraforge-nope-3"), None);
        assert_eq!(
            parse_instance_name("loraforge-", &format!("loraforge-{lora}-x")),
            None
        );
        assert_eq!(
            parse_instance_name("loraforge-", &format!("loraforge-{lora}-+3")),
            None,
            "only the digits we write"
        );
        assert_eq!(
            parse_instance_name("loraforge-", &format!("loraforge-{lora}-")),
            None
        );
    }

    #[test]
    fn sample_instance_names_round_trip_and_are_never_runs() {
        let batch = SampleBatchId::new();
        let name = sample_instance_name("loraforge-", batch, 2);
        assert_eq!(name, format!("loraforge-sample-{batch}-2"));
        assert_eq!(
            parse_instance_name("loraforge-", &name),
            Some(InstanceOwner::Sample { batch, attempt: 2 })
        );
        // Under another prefix, or with a broken id or attempt, it is nobody's.
        assert_eq!(parse_instance_name("lf-", &name), None);
        assert_eq!(
            parse_instance_name("loraforge-", "loraforge-sample-nope-2"),
            None
        );
        assert_eq!(
            parse_instance_name("loraforge-", &format!("loraforge-sample-{batch}-two")),
            None
        );
        // A custom prefix works the same for both kinds.
        let lora = LoraId::new();
        assert_eq!(
            parse_instance_name("acme-lf-", &instance_name("acme-lf-", lora, 1)),
            Some(InstanceOwner::Run { lora, attempt: 1 })
        );
        assert_eq!(
            parse_instance_name("acme-lf-", &sample_instance_name("acme-lf-", batch, 1)),
            Some(InstanceOwner::Sample { batch, attempt: 1 })
        );
    }
}
