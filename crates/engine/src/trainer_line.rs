//! The trainer's stdout contract (`trainer/README.md`): one JSON object per line. The engine
//! needs progress (stage, step/total, ETA) and, when a run fails, the trainer's reason.

use serde::Deserialize;

use loraforge_domain::Progress;

/// One line of trainer output, as far as the control plane cares.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainerLine {
    Stage(String),
    Step {
        step: u64,
        total: u64,
        eta_s: Option<f64>,
    },
    /// The last line of a failed run.
    Error {
        code: String,
        reason: String,
        /// The trainer's `"retryable": true`: the same job may succeed later.
        retryable: bool,
    },
    /// Anything else: checkpoints, outputs, done, stopped, unknown events, non-JSON noise.
    Other,
}

#[derive(Deserialize)]
struct Raw {
    event: String,
    stage: Option<String>,
    step: Option<u64>,
    total: Option<u64>,
    eta_s: Option<f64>,
    code: Option<String>,
    reason: Option<String>,
    retryable: Option<bool>,
}

impl TrainerLine {
    pub fn parse(line: &str) -> TrainerLine {
        let Ok(raw) = serde_json::from_str::<Raw>(line.trim()) else { return TrainerLine::Other };
        match raw.event.as_str() {
            "stage" => raw.stage.map_or(TrainerLine::Other, TrainerLine::Stage),
            "progress" => match (raw.step, raw.total) {
                (Some(step), Some(total)) => TrainerLine::Step { step, total, eta_s: raw.eta_s },
                _ => TrainerLine::Other,
            },
            "error" => TrainerLine::Error {
                code: raw.code.unwrap_or_else(|| "unknown".to_owned()),
                reason: raw.reason.unwrap_or_else(|| "the trainer reported an error".to_owned()),
                retryable: raw.retryable.unwrap_or(false),
            },
            _ => TrainerLine::Other,
        }
    }
}

/// Folds trainer lines into the [`Progress`] the database shows.
#[derive(Debug, Clone, Default)]
pub struct ProgressTracker {
    current: Progress,
}

impl ProgressTracker {
    /// The new progress if `line` changes it.
    pub fn apply(&mut self, line: &TrainerLine) -> Option<Progress> {
        match line {
            TrainerLine::Stage(stage) => {
                self.current.stage = Some(stage.clone());
                if stage == "done" {
                    self.current.percent = 100;
                    self.current.estimated_remaining = Some(0);
                }
            }
            TrainerLine::Step { step, total, eta_s } => {
                let total = (*total).max(1);
                self.current.percent = u8::try_from((step.min(&total) * 100) / total).unwrap_or(100);
                self.current.estimated_remaining =
                    eta_s.filter(|e| e.is_finite() && *e >= 0.0).map(|e| e.ceil().min(f64::from(u32::MAX)) as u32);
            }
            TrainerLine::Error { .. } | TrainerLine::Other => return None,
        }
        Some(self.current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_the_readme_parse() {
        assert_eq!(
            TrainerLine::parse(r#"{"event":"stage","stage":"training"}"#),
            TrainerLine::Stage("training".into())
        );
        assert_eq!(
            TrainerLine::parse(r#"{"event":"progress","step":3,"total":10,"loss":0.1,"it_per_s":2.0,"eta_s":3.5}"#),
            TrainerLine::Step { step: 3, total: 10, eta_s: Some(3.5) }
        );
        assert_eq!(
            TrainerLine::parse(r#"{"event":"progress","step":3,"total":10,"loss":null,"eta_s":null}"#),
            TrainerLine::Step { step: 3, total: 10, eta_s: None }
        );
        assert_eq!(
            TrainerLine::parse(
                r#"{"event":"error","code":"non_finite_loss","reason":"non-finite loss at step 4","exit_code":3}"#
            ),
            TrainerLine::Error {
                code: "non_finite_loss".into(),
                reason: "non-finite loss at step 4".into(),
                retryable: false
            }
        );
        assert!(matches!(
            TrainerLine::parse(r#"{"event":"error","code":"model_unavailable","reason":"hub down","exit_code":2,"retryable":true}"#),
            TrainerLine::Error { retryable: true, .. }
        ));
        for other in ["", "not json", "[]", r#"{"event":"checkpoint","step":4}"#, r#"{"no":"event"}"#] {
            assert_eq!(TrainerLine::parse(other), TrainerLine::Other, "{other}");
        }
    }

    #[test]
    fn progress_follows_stage_and_steps() {
        let mut t = ProgressTracker::default();
        let p = t.apply(&TrainerLine::Stage("training".into())).unwrap();
        assert_eq!((p.stage.as_deref(), p.percent), (Some("training"), 0));
        let p = t.apply(&TrainerLine::Step { step: 5, total: 20, eta_s: Some(7.2) }).unwrap();
        assert_eq!((p.stage.as_deref(), p.percent, p.estimated_remaining), (Some("training"), 25, Some(8)));
        let p = t.apply(&TrainerLine::Step { step: 30, total: 20, eta_s: Some(f64::NAN) }).unwrap();
        assert_eq!((p.percent, p.estimated_remaining), (100, None));
        assert_eq!(t.apply(&TrainerLine::Other), None);
    }
}
