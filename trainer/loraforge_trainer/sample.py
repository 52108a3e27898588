"""Sample images from a trained LoRA the way a generator would: the base SDXL pipeline with our
diffusers-format LoRA file loaded by ``pipe.load_lora_weights`` and its strength set per image
with ``pipe.set_adapters`` (diffusers' generator-facing way to scale a loaded LoRA; 0 renders
the base model, 1 the LoRA as trained). One image per entry, each with its own CPU generator
seeded from the entry, so the same entry renders the same image anywhere.

``python -m loraforge_trainer sample --spec SPEC.json --out DIR``; the spec is described in
README.md ("Sampling"). Images are written atomically as ``DIR/<index>.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import EXIT_INTERNAL, SpecError, TrainerError
from .events import emit, log, stage
from .fsutil import atomic_write

ADAPTER = "loraforge"
# The trainer's own sanity limits; the control plane's ranges (crates/domain/src/samples.rs) are
# inside them.
MAX_IMAGES = 16
MAX_SIDE = 4096
MAX_STEPS = 500
MAX_SCALE = 4.0
MIXED_PRECISION = ("auto", "no", "bf16")


@dataclass(frozen=True)
class SampleItem:
    prompt: str
    negative_prompt: str | None
    seed: int
    scale: float
    steps: int
    width: int
    height: int
    guidance_scale: float


@dataclass(frozen=True)
class SampleSpec:
    base_model: str
    lora: str
    items: list[SampleItem]
    mixed_precision: str = "auto"
    debug_fail: bool = False


def _int(raw: dict, field: str, lo: int, hi: int, where: str) -> int:
    v = raw.get(field)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SpecError(f"{where}.{field}", f"must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _number(raw: dict, field: str, lo: float, hi: float, where: str, default: float | None = None) -> float:
    v = raw.get(field, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise SpecError(f"{where}.{field}", f"must be a number in {lo}..{hi}, got {v!r}")
    return float(v)


def _side(raw: dict, field: str, where: str) -> int:
    v = _int(raw, field, 8, MAX_SIDE, where)
    if v % 8:
        raise SpecError(f"{where}.{field}", f"must be a multiple of 8, got {v}")
    return v


def _item(raw: Any, i: int) -> SampleItem:
    where = f"images[{i}]"
    if not isinstance(raw, dict):
        raise SpecError(where, "must be an object")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise SpecError(f"{where}.prompt", "must be a non-empty string")
    neg = raw.get("negative_prompt")
    if neg is not None and not isinstance(neg, str):
        raise SpecError(f"{where}.negative_prompt", "must be a string or null")
    return SampleItem(
        prompt=prompt,
        negative_prompt=neg or None,
        seed=_int(raw, "seed", 0, 2**63 - 1, where),
        scale=_number(raw, "scale", 0.0, MAX_SCALE, where),
        steps=_int(raw, "steps", 1, MAX_STEPS, where),
        width=_side(raw, "width", where),
        height=_side(raw, "height", where),
        guidance_scale=_number(raw, "guidance_scale", 0.0, 50.0, where, default=7.0),
    )


def parse_sample_spec(raw: Any) -> SampleSpec:
    if not isinstance(raw, dict):
        raise TrainerError("bad_spec", "the sample spec must be a JSON object")
    for field in ("base_model", "lora"):
        if not isinstance(raw.get(field), str) or not raw[field]:
            raise SpecError(field, "must be a non-empty string")
    images = raw.get("images")
    if not isinstance(images, list) or not 1 <= len(images) <= MAX_IMAGES:
        raise SpecError("images", f"must be a list of 1..{MAX_IMAGES} objects")
    mp = raw.get("mixed_precision", "auto")
    if mp not in MIXED_PRECISION:
        raise SpecError("mixed_precision", f"must be one of {', '.join(MIXED_PRECISION)}")
    debug_fail = raw.get("debug_fail", False)
    if not isinstance(debug_fail, bool):
        raise SpecError("debug_fail", "must be a boolean")
    known = {"base_model", "lora", "images", "mixed_precision", "debug_fail"}
    for k in sorted(set(raw) - known):
        log(f"sample spec: ignoring unknown field {k!r}")
    return SampleSpec(base_model=raw["base_model"], lora=raw["lora"],
                      items=[_item(it, i) for i, it in enumerate(images)],
                      mixed_precision=mp, debug_fail=debug_fail)


def load_sample_spec(path: str | Path) -> SampleSpec:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise TrainerError("bad_spec", f"cannot read spec {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise TrainerError("bad_spec", f"spec {path} is not valid JSON: {e}") from e
    return parse_sample_spec(raw)


def _device_and_dtype(mixed_precision: str) -> tuple[torch.device, torch.dtype]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda"
                                     and torch.cuda.is_bf16_supported()):
        return device, torch.bfloat16
    return device, torch.float32


def load_generator_pipeline(base: str, lora: Path, device: torch.device, dtype: torch.dtype):
    """The base pipeline with ``lora`` loaded as adapter ``loraforge`` (what a generator does)."""
    from .train import resolve_base_model
    from .validate import load_pipeline

    base = resolve_base_model(base)
    if not lora.is_file():
        raise TrainerError("bad_lora", f"LoRA file {lora} does not exist")
    try:
        pipe = load_pipeline(base, device, dtype, lora_file=None)
    except (OSError, ValueError) as e:
        raise TrainerError("bad_model", f"cannot load the base model from {base}: {e}".splitlines()[0][:500]) from e
    try:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name=ADAPTER)
    except Exception as e:  # diffusers raises ValueError/KeyError/RuntimeError for a bad file
        raise TrainerError("bad_lora", f"cannot load the LoRA file {lora.name}: {e}".splitlines()[0][:500]) from e
    pipe.to(device)
    return pipe


@torch.inference_mode()
def render(pipe, item: SampleItem):
    """One image for ``item`` with the LoRA at ``item.scale``; a PIL image."""
    pipe.set_adapters([ADAPTER], adapter_weights=[item.scale])
    gen = [torch.Generator(device="cpu").manual_seed(item.seed)]
    kwargs: dict[str, Any] = {"prompt": [item.prompt], "num_inference_steps": item.steps,
                              "guidance_scale": item.guidance_scale, "height": item.height,
                              "width": item.width, "generator": gen, "output_type": "latent"}
    if item.negative_prompt:
        kwargs["negative_prompt"] = [item.negative_prompt]
    latents = pipe(**kwargs).images
    return _decode(pipe, latents)[0]


def _decode(pipe, latents: torch.Tensor) -> list:
    # As validate.sample: decode in fp32 (the pipeline feeds bf16 latents to an fp32 VAE as is).
    vae = pipe.vae
    latents = latents.to(vae.device, torch.float32) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        latents = latents + shift
    decoded = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil")


def run(spec: SampleSpec, out_dir: str | Path) -> dict[str, Any]:
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device, dtype = _device_and_dtype(spec.mixed_precision)
    stage("loading_model")
    pipe = load_generator_pipeline(spec.base_model, Path(spec.lora), device, dtype)
    if spec.debug_fail:
        raise TrainerError("sample_failed", "debug: the sampler was asked to fail (debug_fail)", EXIT_INTERNAL)
    stage("sampling")
    paths: list[str] = []
    total = len(spec.items)
    for i, item in enumerate(spec.items):
        t0 = time.monotonic()
        try:
            image = render(pipe, item)
        except TrainerError:
            raise
        except Exception as e:
            if type(e).__name__ == "OutOfMemoryError":
                raise TrainerError("out_of_memory", str(e).splitlines()[0][:500], 4) from e
            raise TrainerError("sample_failed", f"image {i} could not be rendered: {e}".splitlines()[0][:500],
                               EXIT_INTERNAL) from e
        path = atomic_write(out / f"{i}.png", lambda f, im=image: im.save(f, format="PNG"))
        paths.append(str(path.resolve()))
        emit("progress", stage="sampling", step=i + 1, total=total, seconds=round(time.monotonic() - t0, 3))
        emit("output", path=paths[-1], kind="sample_image", index=i, seed=item.seed, scale=item.scale,
             width=item.width, height=item.height)
    return {"images": paths, "device": device.type, "dtype": str(dtype).removeprefix("torch."),
            "total_seconds": round(time.monotonic() - started, 3)}
