//! The wire shapes of api-contracts.md §3, and the model reference trainings are created from.

use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The input field that names the instance a training runs (`domain::run::instance_name`): how
/// a training whose create answer was lost is found again, and how the orphan sweep lists ours.
pub const INSTANCE_TAG: &str = "loraforge_instance";

/// A training's state. `starting → processing → succeeded | failed | canceled`; a cancel may
/// come straight from `starting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainingStatus {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    /// Allowed by the JS client's type; whether trainings use it is unconfirmed. Terminal.
    Aborted,
    /// A state this code does not know; treated as not terminal.
    Other(String),
}

impl TrainingStatus {
    pub fn parse(text: &str) -> Self {
        match text {
            "starting" => Self::Starting,
            "processing" => Self::Processing,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "aborted" => Self::Aborted,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Aborted
        )
    }
}

impl<'de> Deserialize<'de> for TrainingStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// `metrics`: `{}` until the training is terminal.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Metrics {
    /// Seconds of billed run time.
    pub predict_time: Option<f64>,
    pub total_time: Option<f64>,
}

/// A training as `GET /trainings/{id}` answers it (fields this code uses; the rest ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Training {
    pub id: String,
    pub status: TrainingStatus,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub input: Value,
    /// `{version, weights}` once succeeded; else null.
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub logs: Option<String>,
    /// A string, or null.
    #[serde(default)]
    pub error: Value,
    #[serde(default, deserialize_with = "metrics")]
    pub metrics: Metrics,
    #[serde(default)]
    pub created_at: Option<String>,
}

fn metrics<'de, D: Deserializer<'de>>(d: D) -> Result<Metrics, D::Error> {
    Ok(Option::<Metrics>::deserialize(d)?.unwrap_or_default())
}

impl Training {
    /// The instance this training runs, from its input's tag.
    pub fn instance_tag(&self) -> Option<&str> {
        self.input.get(INSTANCE_TAG).and_then(Value::as_str)
    }

    /// `output.weights`: where the trained tar is.
    pub fn weights_url(&self) -> Option<&str> {
        self.output.get("weights").and_then(Value::as_str)
    }

    /// `metrics.predict_time` in whole milliseconds (rounded), when present and sane.
    pub fn predict_millis(&self) -> Option<u64> {
        let seconds = self.metrics.predict_time?;
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        // At most ~292 million years: the cast saturates, it cannot wrap.
        Some((seconds * 1000.0).round() as u64)
    }

    /// `error` as text (a string, or the JSON of anything else).
    pub fn error_text(&self) -> Option<String> {
        match &self.error {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// `GET /trainings`: one page, newest first.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(default)]
    pub results: Vec<Training>,
}

/// The trainer version trainings run: `owner/name:version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub owner: String,
    pub name: String,
    pub version: String,
}

impl ModelRef {
    /// Parses `owner/name:version`; owner and name are Replicate's slugs (letters, digits,
    /// `-`, `_`, `.`), the version an id of letters and digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} is not owner/name:version: {why}");
        let (model, version) = text.split_once(':').ok_or_else(|| bad("no ':version'"))?;
        let (owner, name) = parse_slug_pair(model).map_err(|e| bad(&e))?;
        if version.is_empty() || !version.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("the version must be letters and digits"));
        }
        Ok(Self {
            owner,
            name,
            version: version.to_owned(),
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.owner, self.name, self.version)
    }
}

/// `owner/name`, each a non-empty slug.
pub fn parse_slug_pair(text: &str) -> Result<(String, String), String> {
    let (owner, name) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not owner/name"))?;
    let slug = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !s.starts_with('.')
    };
    if !slug(owner) || !slug(name) {
        return Err(format!(
            "{text:?} is not owner/name (letters, digits, '-', '_', '.')"
        ));
    }
    Ok((owner.to_owned(), name.to_owned()))
}

/// What a create sends.
#[derive(Debug, Clone)]
pub struct CreateTraining {
    /// `owner/name` of the model the trained version goes to; it must exist.
    pub destination: String,
    /// The cog `train()` inputs plus [`INSTANCE_TAG`].
    pub input: Value,
    pub webhook: Option<String>,
    /// Events sent to `webhook` (`start`, `output`, `logs`, `completed`).
    pub webhook_events_filter: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn model_refs() {
        let m = ModelRef::parse(
            "acme/lora-trainer:5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        )
        .unwrap();
        assert_eq!(m.owner, "acme");
        assert_eq!(m.name, "lora-trainer");
        assert_eq!(
            m.to_string().split_once(':').unwrap().0,
            "acme/lora-trainer"
        );
        for bad in [
            "acme/x", "acme:1", "/x:1", "acme/:1", "a/b:", "a/b:x/y", "a/b/c:1", "a b/c:1",
        ] {
            assert!(ModelRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trainings_read_the_documented_shapes() {
        let t: Training = serde_json::from_value(json!({
            "id": "zz4ibbonubfz7carwiefibzgga", "status": "succeeded",
            "input": {"dataset_url": "u", INSTANCE_TAG: "loraforge-x-1"},
            "output": {"version": "a/b:c", "weights": "https://x/trained_model.tar"},
            "metrics": {"predict_time": 502.713876}, "error": null, "logs": "..."
        }))
        .unwrap();
        assert_eq!(t.status, TrainingStatus::Succeeded);
        assert_eq!(t.instance_tag(), Some("loraforge-x-1"));
        assert_eq!(t.weights_url(), Some("https://x/trained_model.tar"));
        assert_eq!(t.predict_millis(), Some(502_714));
        let starting: Training = serde_json::from_value(json!({
            "id": "a", "status": "starting", "metrics": {}, "output": null, "logs": null
        }))
        .unwrap();
        assert_eq!(starting.predict_millis(), None);
        assert!(!starting.status.is_terminal());
        assert_eq!(starting.weights_url(), None);
        let odd: Training =
            serde_json::from_value(json!({"id": "a", "status": "queued", "metrics": null}))
                .unwrap();
        assert_eq!(odd.status, TrainingStatus::Other("queued".into()));
    }
}
