"""Failures the trainer reports on purpose, each with a stable ``code`` and exit status.

Exit statuses (also in README.md):

* 0  done
* 1  internal error (a bug or an unexpected exception)
* 2  bad input: spec, images, base model, checkpoint mismatch (not worth retrying)
* 3  non-finite (NaN/Inf) loss
* 4  out of memory on the accelerator
* 5  validation images could not be generated (the LoRA files were written)
* 10 stopped early on request (``--max-steps-this-run``, SIGTERM/SIGINT); a checkpoint was
     written and ``--resume`` continues from it
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_OOM = 4
EXIT_VALIDATION = 5
EXIT_STOPPED = 10


class TrainerError(Exception):
    """An error with a machine-readable code, a human reason and the process exit status."""

    def __init__(self, code: str, reason: str, exit_code: int = EXIT_BAD_INPUT, **extra):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.exit_code = exit_code
        self.extra = extra


class SpecError(TrainerError):
    def __init__(self, field: str, problem: str):
        super().__init__("bad_spec", f"spec field `{field}`: {problem}", EXIT_BAD_INPUT, field=field)


class NonFiniteLoss(TrainerError):
    def __init__(self, step: int, value: float):
        super().__init__(
            "non_finite_loss",
            f"non-finite loss at step {step}",
            EXIT_NON_FINITE,
            step=step,
            loss=str(value),
        )


class StopRequested(Exception):
    """Raised after a checkpoint when the run was asked to stop early; not an error."""

    def __init__(self, step: int, reason: str, checkpoint: str):
        super().__init__(reason)
        self.step = step
        self.reason = reason
        self.checkpoint = checkpoint
