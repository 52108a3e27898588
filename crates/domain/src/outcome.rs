//! How a training run ended: one table of outcome codes shared by the trainer (its `error`
//! lines and exit statuses, `trainer/loraforge_trainer/errors.py`), the worker agent (its own
//! failures and exit statuses) and the control plane (what the engine observes: a lost process,
//! a vanished instance, a timeout). The worker reports its outcome over the protocol
//! (`POST /api/v1/worker/jobs/{id}/failure`), so a run on somebody else's machine never depends
//! on an exit code; exit statuses remain for processes on this host and are derived from here.
//!
//! Each code says what its job does next ([`Disposition`]): publish, run again (and whether
//! that run counts toward the job's attempts — a crash of the control plane or a stop it asked
//! for does not), fail, or nothing (the job already moved on). Tests check the trainer's sources
//! against this table.

/// What an outcome means for the run's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// The run trained and uploaded its files: go on to the after-training steps.
    Trained,
    /// Run the job again. `counted`: this run's failure uses up one of the job's attempts; a run
    /// stopped by the control plane itself (a crash, a shutdown, a missing GPU) does not.
    Retry { counted: bool },
    /// The job cannot succeed as given.
    Fail,
    /// Nothing to decide: the job moved on before the run ended (cancelled, requeued, failed).
    Moot,
}

/// Who reports an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Trainer,
    Worker,
    ControlPlane,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutcomeSpec {
    /// Stable snake_case code, on the wire and in the database.
    pub code: &'static str,
    /// The process exit status that goes with it, for outcomes of a process.
    pub exit: Option<i32>,
    pub origin: Origin,
    pub disposition: Disposition,
    /// The start of the message people see, completed by the reporter's reason.
    pub headline: &'static str,
    /// The provider running the instance is to blame (it lost or never started the instance),
    /// not the job or the control plane: counts toward the backend's circuit breaker
    /// (`crate::breaker`). Never a user's bad input, a diverged job, a validation or a cancel.
    pub provider_fault: bool,
}

impl OutcomeSpec {
    /// This row, marked as the provider's fault.
    const fn provider(self) -> Self {
        OutcomeSpec {
            provider_fault: true,
            ..self
        }
    }
}

/// Exit statuses of the trainer and the worker agent (`trainer/README.md`,
/// `docs/worker-protocol.md`).
pub mod exit {
    pub const OK: i32 = 0;
    pub const INTERNAL: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const NON_FINITE: i32 = 3;
    pub const OUT_OF_MEMORY: i32 = 4;
    pub const VALIDATION: i32 = 5;
    pub const STOPPED: i32 = 10;
    pub const UPLOAD_FAILED: i32 = 11;
    pub const NOT_ACTIVE: i32 = 12;
    pub const UNREACHABLE: i32 = 13;
}

use Disposition::{Fail, Moot, Retry, Trained};
use Origin::{ControlPlane, Trainer, Worker};

const fn row(
    code: &'static str,
    exit: i32,
    origin: Origin,
    disposition: Disposition,
    headline: &'static str,
) -> OutcomeSpec {
    OutcomeSpec {
        code,
        exit: Some(exit),
        origin,
        disposition,
        headline,
        provider_fault: false,
    }
}

const fn observed(
    code: &'static str,
    disposition: Disposition,
    headline: &'static str,
) -> OutcomeSpec {
    OutcomeSpec {
        code,
        exit: None,
        origin: ControlPlane,
        disposition,
        headline,
        provider_fault: false,
    }
}

const COUNTED: Disposition = Retry { counted: true };
const NOT_COUNTED: Disposition = Retry { counted: false };

/// Every outcome code. The first row with a given exit status is that status's generic code
/// ([`from_exit`]).
pub const OUTCOMES: &[OutcomeSpec] = &[
    row("trained", exit::OK, Worker, Trained, "trained"),
    // The trainer's own codes (trainer/README.md).
    row(
        "internal",
        exit::INTERNAL,
        Trainer,
        Fail,
        "the trainer crashed",
    ),
    row(
        "bad_input",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "non_finite_loss",
        exit::NON_FINITE,
        Trainer,
        Fail,
        "training diverged",
    ),
    row(
        "out_of_memory",
        exit::OUT_OF_MEMORY,
        Trainer,
        Fail,
        "training ran out of memory",
    ),
    row(
        "validation_failed",
        exit::VALIDATION,
        Trainer,
        Fail,
        "the validation images could not be generated",
    ),
    row(
        "stopped",
        exit::STOPPED,
        Trainer,
        NOT_COUNTED,
        "the run stopped before finishing",
    ),
    row(
        "upload_failed",
        exit::UPLOAD_FAILED,
        Worker,
        COUNTED,
        "the trained files could not be uploaded",
    ),
    row(
        "job_not_active",
        exit::NOT_ACTIVE,
        Worker,
        Moot,
        "the job is no longer active",
    ),
    row(
        "control_plane_unreachable",
        exit::UNREACHABLE,
        Worker,
        COUNTED,
        "the worker could not reach the control plane",
    ),
    row(
        "interrupted",
        exit::INTERNAL,
        Trainer,
        NOT_COUNTED,
        "the trainer was interrupted before training",
    ),
    row(
        "bad_arguments",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "bad_spec",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "missing_model",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "model_unavailable",
        exit::BAD_INPUT,
        Trainer,
        COUNTED,
        "the base model could not be loaded for now",
    ),
    row(
        "bad_images",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "empty_dataset",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "bad_image",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "bad_caption",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    // The sampler's (`trainer sample`): a LoRA file the pipeline cannot load, a render that failed.
    row(
        "bad_lora",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the LoRA file could not be loaded",
    ),
    row(
        "sample_failed",
        exit::INTERNAL,
        Trainer,
        COUNTED,
        "the sample images could not be rendered",
    ),
    row(
        "missing_scorer",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "optimizer_unavailable",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "checkpoint_mismatch",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    row(
        "bad_model",
        exit::BAD_INPUT,
        Trainer,
        Fail,
        "the training job is invalid",
    ),
    // The worker agent's own codes (docs/worker-protocol.md).
    row(
        "trainer_silent",
        exit::STOPPED,
        Worker,
        COUNTED,
        "the trainer hung",
    ),
    row(
        "trainer_killed",
        exit::STOPPED,
        Worker,
        COUNTED,
        "the trainer was killed",
    ),
    row(
        "trainer_failed",
        exit::INTERNAL,
        Worker,
        Fail,
        "the trainer crashed",
    ),
    row(
        "trainer_unavailable",
        exit::INTERNAL,
        Worker,
        COUNTED,
        "the training host cannot run the trainer",
    ),
    row(
        "missing_output",
        exit::INTERNAL,
        Worker,
        Fail,
        "the trainer crashed",
    ),
    row(
        "io_error",
        exit::INTERNAL,
        Worker,
        COUNTED,
        "the training host failed",
    ),
    row(
        "bad_job",
        exit::BAD_INPUT,
        Worker,
        Fail,
        "the training job is invalid",
    ),
    row(
        "result_failed",
        exit::UPLOAD_FAILED,
        Worker,
        COUNTED,
        "the result could not be reported",
    ),
    row(
        "result_rejected",
        exit::INTERNAL,
        Worker,
        Fail,
        "the control plane rejected the result",
    ),
    row(
        "job_refused",
        exit::UNREACHABLE,
        Worker,
        COUNTED,
        "the control plane refused the worker",
    ),
    row(
        "job_unreadable",
        exit::UNREACHABLE,
        Worker,
        COUNTED,
        "the worker could not read its job",
    ),
    row(
        "bad_server_url",
        exit::UNREACHABLE,
        Worker,
        COUNTED,
        "the worker was given a bad control plane URL",
    ),
    row(
        "no_token",
        exit::UNREACHABLE,
        Worker,
        COUNTED,
        "the worker was started without its token",
    ),
    row(
        "image_download_failed",
        exit::UNREACHABLE,
        Worker,
        COUNTED,
        "the training images could not be downloaded",
    ),
    row(
        "checkpoint_download_failed",
        exit::UNREACHABLE,
        Worker,
        COUNTED,
        "the checkpoint could not be downloaded",
    ),
    // What the control plane observes or decides.
    // A restart of the service, not the provider: it never trips a breaker.
    observed("lost", NOT_COUNTED, "the run was lost"),
    observed("killed", COUNTED, "the worker was killed"),
    observed(
        "vanished",
        COUNTED,
        "the training instance ended without a word from its worker",
    )
    .provider(),
    // Workers' heartbeats and the engine's own observation of a running instance both extend
    // the lease: it expires only when the engine that owned the run stopped watching it (a
    // crash of the control plane), which is no fault of the job.
    observed("lease_expired", NOT_COUNTED, "the worker stopped reporting"),
    observed("timed_out", Fail, "training took too long"),
    observed("cancelled", Moot, "the LoRA was cancelled"),
    observed("superseded", Moot, "the job moved on"),
    observed(
        "shutdown",
        NOT_COUNTED,
        "the control plane stopped the run to shut down",
    ),
    observed(
        "upload_missing",
        COUNTED,
        "the trained files are missing from storage",
    ),
    observed("start_failed", Fail, "training could not start").provider(),
    // A provider that runs the trainer itself (Replicate, ai-toolkit) said its run failed
    // without the trainer saying why: the host's fault, not the job's.
    observed(
        "provider_failed",
        NOT_COUNTED,
        "the training provider ended the run with a failure of its own",
    )
    .provider(),
];

/// The table's row for `code`.
pub fn spec(code: &str) -> Option<&'static OutcomeSpec> {
    OUTCOMES.iter().find(|s| s.code == code)
}

/// What a reported outcome means. A code this version does not know (a newer worker's) fails
/// the job unless its reporter said it may pass (`retryable`); a known failure the reporter
/// calls retryable counts as a retry.
pub fn disposition(code: &str, retryable: bool) -> Disposition {
    match spec(code).map(|s| s.disposition) {
        Some(Fail) | None if retryable => COUNTED,
        Some(d) => d,
        None => Fail,
    }
}

/// Whether outcome `code` is the provider's fault (counts toward its backend's breaker).
pub fn is_provider_fault(code: &str) -> bool {
    spec(code).is_some_and(|s| s.provider_fault)
}

/// The exit status a worker uses for `code` (1 for codes without one).
pub fn exit_code(code: &str) -> i32 {
    spec(code).and_then(|s| s.exit).unwrap_or(exit::INTERNAL)
}

/// The generic outcome of a process that exited with `code` without reporting (`None`: killed
/// by a signal).
pub fn from_exit(code: Option<i32>) -> &'static OutcomeSpec {
    let found = code.and_then(|c| OUTCOMES.iter().find(|s| s.exit == Some(c)));
    match (code, found) {
        (_, Some(s)) => s,
        (None, None) => spec("killed").expect("in the table"),
        (Some(_), None) => spec("internal").expect("in the table"),
    }
}

/// The message people see for an outcome: its headline, then the reporter's reason.
pub fn describe(code: &str, reason: Option<&str>) -> String {
    let headline = spec(code).map_or("the run failed", |s| s.headline);
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => format!("{headline}: {r}"),
        None => headline.to_owned(),
    }
}

/// An outcome code must look like one: 1–64 of `[a-z0-9_]`.
pub fn is_valid_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_well_formed() {
        for (i, s) in OUTCOMES.iter().enumerate() {
            assert!(is_valid_code(s.code), "{}", s.code);
            assert!(
                OUTCOMES[..i].iter().all(|o| o.code != s.code),
                "{} twice",
                s.code
            );
            assert!(!s.headline.is_empty());
        }
    }

    #[test]
    fn every_exit_status_has_a_generic_code() {
        for (status, code) in [
            (0, "trained"),
            (1, "internal"),
            (2, "bad_input"),
            (3, "non_finite_loss"),
            (4, "out_of_memory"),
            (5, "validation_failed"),
            (10, "stopped"),
            (11, "upload_failed"),
            (12, "job_not_active"),
            (13, "control_plane_unreachable"),
        ] {
            assert_eq!(from_exit(Some(status)).code, code, "exit {status}");
            assert_eq!(exit_code(code), status);
        }
        assert_eq!(from_exit(None).code, "killed");
        assert_eq!(from_exit(Some(77)).code, "internal");
    }

    #[test]
    fn dispositions_follow_the_table_and_the_reporter() {
        assert_eq!(disposition("trained", false), Trained);
        assert_eq!(disposition("non_finite_loss", false), Fail);
        assert_eq!(
            disposition("non_finite_loss", true),
            COUNTED,
            "the reporter says it may pass"
        );
        assert_eq!(
            disposition("stopped", false),
            NOT_COUNTED,
            "stopped by the platform"
        );
        assert_eq!(
            disposition("lost", false),
            NOT_COUNTED,
            "a crash of the control plane"
        );
        assert_eq!(disposition("vanished", false), COUNTED);
        assert_eq!(
            disposition("lease_expired", false),
            NOT_COUNTED,
            "the engine that watched the run died"
        );
        assert_eq!(disposition("upload_failed", false), COUNTED);
        assert_eq!(disposition("cancelled", false), Moot);
        assert_eq!(disposition("some_new_code", false), Fail);
        assert_eq!(disposition("some_new_code", true), COUNTED);
        assert_eq!(disposition("model_unavailable", false), COUNTED);
    }

    #[test]
    fn only_the_providers_failures_trip_a_breaker() {
        for code in ["vanished", "start_failed", "provider_failed"] {
            assert!(is_provider_fault(code), "{code}");
        }
        for code in [
            "lost",
            "trained",
            "bad_input",
            "non_finite_loss",
            "validation_failed",
            "cancelled",
            "superseded",
            "timed_out",
            "lease_expired",
            "shutdown",
            "some_new_code",
        ] {
            assert!(!is_provider_fault(code), "{code}");
        }
        // The worker's and the trainer's own reports are never the provider's.
        assert!(
            OUTCOMES
                .iter()
                .filter(|s| s.provider_fault)
                .all(|s| s.origin == ControlPlane)
        );
    }

    #[test]
    fn messages_start_with_the_headline() {
        assert_eq!(
            describe("non_finite_loss", Some("non-finite loss at step 3")),
            "training diverged: non-finite loss at step 3"
        );
        assert_eq!(describe("timed_out", None), "training took too long");
        assert_eq!(describe("nope", Some(" ")), "the run failed");
    }
}
