"""Shared fixtures: one tiny random SDXL pipeline (and CLIP scorer) per session, built at test
time — no downloads — and an in-process runner for the trainer CLI (torch is imported once)."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread by default: on a 2-core machine shared with Rust builds, 2 OpenMP threads
# spin-wait on each other and a tiny step takes ~10x longer (measured: 1.85 s vs 0.18 s/step).
THREADS = os.environ.setdefault("LORAFORGE_TORCH_THREADS", "1")
torch.set_num_threads(int(THREADS))

from loraforge_trainer import cli, testing  # noqa: E402

TRIGGER = "zxq"
RANK = 4
ALPHA = 6.0  # deliberately neither the rank nor 1


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return testing.make_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def clip_scorer(tmp_path_factory) -> Path:
    return testing.make_tiny_clip_vision(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    return testing.make_images(tmp_path_factory.mktemp("images"), trigger=TRIGGER)


def make_spec(tiny_model: Path, **over) -> dict:
    spec = {
        "job_id": "job-1",
        "base_model": str(tiny_model),
        "type": "lora",
        "rank": RANK,
        "alpha": ALPHA,
        "dropout": 0.1,
        "target_modules": ["to_k", "to_q", "to_v", "to_out.0"],
        "steps": 10,
        "learning_rate": 1e-3,
        "batch_size": 1,
        "optimizer": "adamw",
        "lr_scheduler": "cosine_with_warmup",
        "lr_warmup_steps": 2,
        "resolution": 64,
        "trigger_words": [TRIGGER],
        "seed": 1234,
        "checkpoint_every": 3,
        "validation": {"steps": 2},
    }
    spec.update(over)
    return spec


class Run:
    def __init__(self, rc: int, stdout: str):
        self.rc = rc
        self.stdout = stdout
        self.events = [json.loads(line) for line in stdout.splitlines()]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def last(self) -> dict:
        return self.events[-1]


def run_trainer(tmp: Path, spec: dict | str, images: Path, out: Path, *extra: str) -> Run:
    """Runs ``python -m loraforge_trainer train`` in this process and parses its stdout; every
    stdout line must be one JSON object."""
    spec_path = tmp / f"spec-{len(list(tmp.glob('spec-*.json')))}.json"
    spec_path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli.main(["train", "--spec", str(spec_path), "--images", str(images), "--out", str(out), *extra])
    return Run(rc, buf.getvalue())


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_model, images, clip_scorer):
    """One complete run (10 steps, checkpoints, validation with the CLIP scorer)."""
    tmp = tmp_path_factory.mktemp("trained")
    spec = make_spec(tiny_model, validation={"steps": 2, "scorer": str(clip_scorer)})
    out = tmp / "out"
    run = run_trainer(tmp, spec, images, out)
    assert run.rc == 0, run.stdout
    return {"run": run, "out": out, "spec": spec}
