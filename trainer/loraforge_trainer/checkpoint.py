"""Resumable training state: LoRA weights, optimizer, LR scheduler, step and every RNG state,
written atomically to ``<out>/checkpoints/step-XXXXXXXX.pt``. The newest two are kept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .events import log
from .fsutil import atomic_write

_NAME = re.compile(r"step-(\d{8})\.pt")
KEEP = 2


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def save_checkpoint(out: Path, step: int, state: dict[str, Any]) -> Path:
    d = checkpoint_dir(out)
    path = atomic_write(d / f"step-{step:08d}.pt", lambda f: torch.save({"step": step, **state}, f))
    found = sorted(_list(d), reverse=True)
    for _, old in found[KEEP:]:
        try:
            old.unlink()
        except FileNotFoundError:
            pass
    return path


def _list(d: Path) -> list[tuple[int, Path]]:
    if not d.is_dir():
        return []
    return [(int(m[1]), p) for p in d.iterdir() if (m := _NAME.fullmatch(p.name))]


def load_latest(out: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads, or None. ``weights_only=True``: a checkpoint holds only
    tensors and plain containers, never pickled code."""
    for _, path in sorted(_list(checkpoint_dir(out)), reverse=True):
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as e:  # a damaged file: fall back to the one before
            log(f"checkpoint {path.name} unreadable ({e}); trying an older one")
    return None
