"""``python -m loraforge_trainer train --spec SPEC.json --images DIR --out DIR [--resume]`` and
``python -m loraforge_trainer sample --spec SAMPLE.json --out DIR``.

Every run ends with exactly one of: a ``done`` event (exit 0), a ``stopped`` event (exit 10,
training only), or an ``error`` event (``code``, ``reason``; exit 1-5). See README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from . import __version__
from .errors import EXIT_INTERNAL, EXIT_OK, EXIT_STOPPED, StopRequested, TrainerError
from .events import emit, log, stage


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a JSON error line instead of argparse's usage dump
        raise TrainerError("bad_arguments", f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m loraforge_trainer", description="loraforge SDXL LoRA trainer")
    p.add_argument("--version", action="version", version=f"loraforge_trainer {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train one LoRA")
    t.add_argument("--spec", required=True, help="job spec JSON file")
    t.add_argument("--images", required=True, help="folder of *.png/*.jpg (+ same-stem .txt captions)")
    t.add_argument("--out", required=True, help="output folder (also holds checkpoints and the latent cache)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out, if any")
    t.add_argument("--max-steps-this-run", type=int, default=None, metavar="N",
                   help="checkpoint and stop (exit 10) after N steps of this invocation")
    t.add_argument("--class-images-cache", default=None, metavar="DIR",
                   help="dreambooth: where class image sets are kept and reused across jobs "
                        "(default: $LORAFORGE_CLASS_IMAGES_CACHE, else OUT/cache/class-images)")
    s = sub.add_parser("sample", help="render images with a trained LoRA, as a generator would")
    s.add_argument("--spec", required=True, help="sample spec JSON file (base model, LoRA file, images)")
    s.add_argument("--out", required=True, help="output folder: <index>.png per image")
    return p


def _configure_threads() -> None:
    import torch

    n = os.environ.get("LORAFORGE_TORCH_THREADS")
    if n:
        torch.set_num_threads(int(n))


def _sample(args) -> int:
    from .sample import load_sample_spec, run

    spec = load_sample_spec(args.spec)
    _configure_threads()
    summary = run(spec, args.out)
    stage("done")
    emit("done", **summary)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    try:
        args = _parser().parse_args(argv)
        if args.command == "sample":
            return _sample(args)
        from .spec import load_spec

        spec = load_spec(args.spec)
        if args.max_steps_this_run is not None and args.max_steps_this_run < 1:
            raise TrainerError("bad_arguments", "--max-steps-this-run must be at least 1")
        _configure_threads()
        from .train import run

        summary = run(spec, args.images, args.out, resume=args.resume, max_steps_this_run=args.max_steps_this_run,
                      class_images_cache=args.class_images_cache)
        stage("done")
        emit("done", job_id=spec.job_id, **summary)
        return EXIT_OK
    except StopRequested as s:
        emit("stopped", step=s.step, reason=s.reason, checkpoint=s.checkpoint)
        log(f"stopped at step {s.step} ({s.reason}); resume with --resume")
        return EXIT_STOPPED
    except TrainerError as e:
        log(f"error [{e.code}]: {e.reason}")
        if e.__cause__ is not None and os.environ.get("LORAFORGE_TRACEBACK"):
            traceback.print_exception(e.__cause__, file=sys.stderr)
        emit("error", code=e.code, reason=e.reason, exit_code=e.exit_code, **e.extra)
        return e.exit_code
    except KeyboardInterrupt:
        emit("error", code="interrupted", reason="interrupted before training started", exit_code=EXIT_INTERNAL)
        return EXIT_INTERNAL
    except Exception as e:  # a bug: say so, with the traceback on stderr
        if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError outside the loop
            emit("error", code="out_of_memory", reason=str(e).splitlines()[0][:500], exit_code=4)
            return 4
        traceback.print_exc(file=sys.stderr)
        emit("error", code="internal", reason=f"internal error: {type(e).__name__}: {e}".splitlines()[0][:500],
             exit_code=EXIT_INTERNAL, elapsed_s=round(time.monotonic() - started, 3))
        return EXIT_INTERNAL
