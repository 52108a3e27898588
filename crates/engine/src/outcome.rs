//! What the end of a run means for its job: the trainer's exit codes (`trainer/README.md`)
//! mapped to a status event.

/// What to do with a job whose run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The run produced its outputs: go on to the after-training steps.
    Trained,
    /// The run stopped early through no fault of the job (preempted, killed): run it again.
    Requeue(String),
    /// The job cannot succeed as given; the reason is for people.
    Fail(String),
}

/// The outcome of a run that exited with `code` (`None`: killed by a signal); `reason` is the
/// trainer's own `error` line, when it wrote one; `retryable`: that line said the failure may
/// pass (then the job is run again, within its attempts, whatever the code).
pub fn outcome_of_exit(code: Option<i32>, reason: Option<&str>, retryable: bool) -> RunOutcome {
    let because = |default: &str| reason.unwrap_or(default).to_owned();
    match code {
        Some(0) => RunOutcome::Trained,
        Some(_) if retryable => RunOutcome::Requeue(format!("the run failed for now: {}", because("no reason given"))),
        Some(10) => RunOutcome::Requeue(match reason {
            Some(r) => format!("the run stopped before finishing: {r}"),
            None => "the run stopped before finishing (it will resume from its last checkpoint)".into(),
        }),
        Some(2) => RunOutcome::Fail(format!("the training job is invalid: {}", because("bad input"))),
        Some(3) => RunOutcome::Fail(format!("training diverged: {}", because("non-finite loss"))),
        Some(4) => RunOutcome::Fail(format!("training ran out of memory: {}", because("out of memory"))),
        Some(5) => {
            RunOutcome::Fail(format!("the validation images could not be generated: {}", because("unknown error")))
        }
        Some(1) => RunOutcome::Fail(format!("the trainer crashed: {}", because("internal error"))),
        Some(11) => RunOutcome::Requeue(format!(
            "the trained files could not be uploaded ({}) and are kept on the training host",
            because("upload failed")
        )),
        // The job moved on and told the worker so: nothing to decide.
        Some(12) => RunOutcome::Requeue("the worker stopped: the job is no longer active".into()),
        Some(13) => RunOutcome::Requeue(format!(
            "the worker could not reach the control plane: {}",
            because("no reason given")
        )),
        Some(c) => RunOutcome::Fail(format!("the worker exited with code {c}: {}", because("no reason given"))),
        None => RunOutcome::Requeue("the worker was killed by a signal".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_outcomes() {
        assert_eq!(outcome_of_exit(Some(0), None, false), RunOutcome::Trained);
        assert!(matches!(outcome_of_exit(Some(10), None, false), RunOutcome::Requeue(_)));
        assert!(matches!(outcome_of_exit(None, None, false), RunOutcome::Requeue(_)));
        assert_eq!(
            outcome_of_exit(Some(3), Some("non-finite loss at step 4"), false),
            RunOutcome::Fail("training diverged: non-finite loss at step 4".into())
        );
        assert_eq!(outcome_of_exit(Some(3), None, false), RunOutcome::Fail("training diverged: non-finite loss".into()));
        assert_eq!(
            outcome_of_exit(Some(2), Some("the hub did not answer"), true),
            RunOutcome::Requeue("the run failed for now: the hub did not answer".into())
        );
        for code in [11, 12, 13] {
            assert!(matches!(outcome_of_exit(Some(code), None, false), RunOutcome::Requeue(_)), "{code}");
        }
        assert!(matches!(outcome_of_exit(Some(11), Some("HTTP 503"), false), RunOutcome::Requeue(r) if r.contains("HTTP 503")));
        for code in [1, 2, 4, 5, 77] {
            assert!(matches!(outcome_of_exit(Some(code), Some("x"), false), RunOutcome::Fail(r) if r.ends_with(": x")));
        }
    }
}
