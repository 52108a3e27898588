"""DreamBooth's class images: ``num_class_images`` pictures of ``class_prompt`` made by the base
model itself, which prior preservation trains on beside the subject's images so the LoRA does not
forget what the class looks like.

They are generated once per (base model, class prompt, resolution, count, seed, inference steps)
into a cache folder shared by every job on the host (``--class-images-cache``), and reused by
later jobs. A set is published whole: generated into a temporary folder, completed by its
``manifest.json``, then renamed into place, under an exclusive lock, so concurrent jobs never
generate the same set twice nor read half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import EXIT_INTERNAL, TrainerError
from .events import emit, log, stage
from .fsutil import atomic_write, atomic_write_bytes, fsync_dir

FORMAT = 1  # bump when the way a set is generated changes, so older sets are not reused
GUIDANCE_SCALE = 7.0
BATCH = 4  # images per pipeline call
MANIFEST = "manifest.json"
STAGE = "generating_class_images"


@dataclass(frozen=True)
class ClassImages:
    folder: Path  # NNNN.png with NNNN.txt (the class prompt) beside each
    count: int
    generated: bool  # False when an existing set was reused


def set_key(base: str, class_prompt: str, resolution: int, count: int, seed: int, steps: int) -> str:
    d = {"format": FORMAT, "base": base, "prompt": class_prompt, "resolution": resolution,
         "count": count, "seed": seed, "steps": steps, "guidance_scale": GUIDANCE_SCALE}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _complete(folder: Path, count: int) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = manifest.get("files") or []
    return len(files) == count and all((folder / f).is_file() for f in files)


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_class_images(spec, base: str, cache_root: Path, device: torch.device, dtype: torch.dtype) -> ClassImages:
    """The spec's class image set, from the cache or generated into it now."""
    count = spec.num_class_images
    key = set_key(base, spec.class_prompt, spec.resolution, count, spec.seed, spec.class_image_steps)
    cache_root = Path(cache_root)
    folder = cache_root / key[:40]
    if _complete(folder, count):
        log(f"reusing {count} class images from {folder}")
        return ClassImages(folder, count, generated=False)
    try:
        with _locked(cache_root / f".{key[:40]}.lock"):
            if _complete(folder, count):  # another job made it while this one waited
                log(f"reusing {count} class images from {folder}")
                return ClassImages(folder, count, generated=False)
            _generate(spec, base, key, folder, device, dtype)
    except OSError as e:
        # The host's disk, not the job: the outcome table retries internal errors.
        raise TrainerError("internal", f"cannot write class images under {cache_root}: {e.strerror or e}",
                           EXIT_INTERNAL) from e
    return ClassImages(folder, count, generated=True)


def _generate(spec, base: str, key: str, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
    from .validate import load_pipeline, sample

    count = spec.num_class_images
    # Only the lock holder gets here: leftovers of an earlier, interrupted run are dead.
    for stale in folder.parent.glob(f".tmp-{key[:40]}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if folder.exists():  # incomplete: never published by this code, but do not trust it
        shutil.rmtree(folder)
    tmp = folder.parent / f".tmp-{key[:40]}-{os.getpid()}"
    tmp.mkdir(parents=True)

    stage(STAGE)
    log(f"generating {count} class images of {spec.class_prompt!r} at {spec.resolution}px into {folder}")
    pipe = load_pipeline(base, device, dtype)
    files: list[str] = []
    t0 = time.monotonic()
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        seeds = [(spec.seed + start + i) % 2**63 for i in range(n)]
        images = sample(pipe, [spec.class_prompt] * n, seeds, spec.class_image_steps, GUIDANCE_SCALE,
                        spec.resolution)
        for i, im in enumerate(images):
            name = f"{start + i:04d}.png"
            atomic_write(tmp / name, lambda f, im=im: im.save(f, format="PNG"))
            atomic_write_bytes(tmp / f"{start + i:04d}.txt", spec.class_prompt.encode("utf-8"))
            files.append(name)
        done = start + n
        it_s = done / max(time.monotonic() - t0, 1e-9)
        emit("progress", stage=STAGE, step=done, total=count, loss=None, lr=None,
             it_per_s=round(it_s, 4), eta_s=round((count - done) / it_s, 1))
    del pipe
    manifest = {"key": key, "base": base, "class_prompt": spec.class_prompt, "resolution": spec.resolution,
                "count": count, "seed": spec.seed, "steps": spec.class_image_steps,
                "guidance_scale": GUIDANCE_SCALE, "files": files}
    atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
