"""The job spec: parsed and checked field by field, so every error names the field at fault.

The Rust control plane (``crates/domain/src/params.rs``) enforces the product's ranges; the
checks here are the trainer's own sanity limits, so that a bad spec fails with a clear message
before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError, TrainerError
from .events import log

TYPES = ("lora", "dreambooth")
OPTIMIZERS = ("adamw", "adamw_8bit")
LR_SCHEDULERS = ("cosine_with_warmup", "constant", "constant_with_warmup", "linear")
MIXED_PRECISION = ("auto", "no", "bf16")
# Every Linear/Conv2d of the SDXL UNet that peft adapts and export.py names for kohya. The
# control plane's list (crates/domain/src/params.rs, TARGET_MODULES) must equal this one
# (crates/domain/tests/trainer_spec_contract.rs).
TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "conv",
    "conv_in",
    "conv_out",
    "linear_1",
    "linear_2",
)
# DreamBooth's prior preservation: required with type "dreambooth", refused with "lora".
DREAMBOOTH_FIELDS = ("class_prompt", "num_class_images", "prior_loss_weight")

REQUIRED = (
    "job_id",
    "base_model",
    "type",
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "steps",
    "learning_rate",
    "batch_size",
    "optimizer",
    "lr_scheduler",
    "lr_warmup_steps",
    "resolution",
    "trigger_words",
    "seed",
)
OPTIONAL = (
    "class_prompt",
    "num_class_images",
    "prior_loss_weight",
    "class_image_steps",
    "mixed_precision",
    "gradient_checkpointing",
    "cache_latents",
    "min_snr_gamma",
    "noise_offset",
    "checkpoint_every",
    "validation",
    "debug_fail_at_step",
)


@dataclass(frozen=True)
class ValidationSpec:
    enabled: bool = True
    prompts: list[str] | None = None  # None: PRD 2's defaults built from the first trigger word
    seed: int | None = None  # None: the training seed
    steps: int = 25
    guidance_scale: float = 7.0
    scorer: str | None = None  # a local CLIP (vision) model folder, or None


@dataclass(frozen=True)
class Spec:
    job_id: str
    base_model: str
    type: str
    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]
    steps: int
    learning_rate: float
    batch_size: int
    optimizer: str
    lr_scheduler: str
    lr_warmup_steps: int
    resolution: int
    trigger_words: list[str]
    seed: int
    class_prompt: str | None = None  # dreambooth only, as the next two
    num_class_images: int | None = None
    prior_loss_weight: float | None = None
    class_image_steps: int = 25  # inference steps per class image
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    min_snr_gamma: float | None = None
    noise_offset: float = 0.0
    checkpoint_every: int = 250
    validation: ValidationSpec = field(default_factory=ValidationSpec)
    debug_fail_at_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def prior_preservation(self) -> bool:
        return self.type == "dreambooth"

    def training_fingerprint(self) -> str:
        """A hash of every field that changes the trained weights (not the job id, the
        checkpoint cadence or validation), stored in checkpoints so ``--resume`` refuses a
        checkpoint from a different run."""
        d = self.to_json()
        for k in ("job_id", "checkpoint_every", "validation", "debug_fail_at_step"):
            d.pop(k, None)
        if not self.prior_preservation:
            # A LoRA's fingerprint stays what it was before DreamBooth existed.
            for k in (*DREAMBOOTH_FIELDS, "class_image_steps"):
                d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _int(v: Any, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise SpecError(name, f"must be an integer, got {json.dumps(v)}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise SpecError(name, f"must be in {lo}..={hi if hi is not None else 'inf'}, got {v}")
    return v


def _float(v: Any, name: str, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise SpecError(name, f"must be a finite number, got {json.dumps(v)}")
    v = float(v)
    if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
        bound = f"({lo}" if lo_open else f"[{lo}"
        raise SpecError(name, f"must be in {bound}, {hi if hi is not None else 'inf'}], got {v}")
    return v


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise SpecError(name, f"must be a non-empty string, got {json.dumps(v)}")
    return v


def _enum(v: Any, name: str, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise SpecError(name, f"must be one of {', '.join(allowed)}, got {json.dumps(v)}")
    return v


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise SpecError(name, f"must be true or false, got {json.dumps(v)}")
    return v


def _str_list(v: Any, name: str, non_empty: bool) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
        raise SpecError(name, "must be a list of non-empty strings")
    if non_empty and not v:
        raise SpecError(name, "must not be empty")
    return list(v)


def _validation(v: Any) -> ValidationSpec:
    if v is None:
        return ValidationSpec()
    if not isinstance(v, dict):
        raise SpecError("validation", "must be an object or null")
    prompts = v.get("prompts")
    if prompts is not None:
        prompts = _str_list(prompts, "validation.prompts", non_empty=True)
        if len(prompts) != 3:
            raise SpecError("validation.prompts", f"must hold exactly 3 prompts, got {len(prompts)}")
    seed = v.get("seed")
    if seed is not None:
        seed = _int(seed, "validation.seed", 0, 2**63 - 1)
    scorer = v.get("scorer")
    if scorer is not None:
        scorer = _str(scorer, "validation.scorer")
        p = Path(scorer)
        if not p.is_dir() or not (p / "config.json").is_file():
            raise TrainerError(
                "missing_scorer",
                f"validation.scorer: {scorer} is not a local model folder (no config.json)",
            )
    return ValidationSpec(
        enabled=_bool(v.get("enabled", True), "validation.enabled"),
        prompts=prompts,
        seed=seed,
        steps=_int(v.get("steps", 25), "validation.steps", 1, 200),
        guidance_scale=_float(v.get("guidance_scale", 7.0), "validation.guidance_scale", 0.0, 50.0),
        scorer=scorer,
    )


def parse_spec(raw: Any) -> Spec:
    """Checks a decoded spec JSON and returns a :class:`Spec`; raises :class:`SpecError`."""
    if not isinstance(raw, dict):
        raise SpecError("(root)", "the spec must be a JSON object")
    for k in REQUIRED:
        if k not in raw:
            raise SpecError(k, "is required")
    unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        log(f"spec: ignoring unknown fields {unknown}")

    job_id = raw["job_id"]
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    job_id = _str(job_id, "job_id")
    kind = _enum(raw["type"], "type", TYPES)
    dreambooth: dict[str, Any] = {}
    if kind == "dreambooth":
        for k in ("class_prompt",):
            if raw.get(k) is None:
                raise SpecError(k, "is required with type \"dreambooth\"")
        dreambooth = dict(
            class_prompt=_str(raw["class_prompt"], "class_prompt"),
            num_class_images=_int(raw.get("num_class_images", 50), "num_class_images", 1, 10_000),
            prior_loss_weight=_float(raw.get("prior_loss_weight", 1.0), "prior_loss_weight", 0.0, 1e3, lo_open=True),
            class_image_steps=_int(raw.get("class_image_steps", 25), "class_image_steps", 1, 200),
        )
    else:
        for k in DREAMBOOTH_FIELDS:
            if raw.get(k) is not None:
                raise SpecError(k, "is used only with type \"dreambooth\"")
    target_modules = _str_list(raw["target_modules"], "target_modules", non_empty=True)
    for m in target_modules:
        if m not in TARGET_MODULES:
            raise SpecError("target_modules", f"{m!r} is not one of {', '.join(TARGET_MODULES)}")

    resolution = _int(raw["resolution"], "resolution", 64, 4096)
    if resolution % 64:
        raise SpecError("resolution", f"must be a multiple of 64, got {resolution}")
    steps = _int(raw["steps"], "steps", 1, 1_000_000)
    warmup = _int(raw["lr_warmup_steps"], "lr_warmup_steps", 0, 1_000_000)

    gamma = raw.get("min_snr_gamma")
    if gamma is not None:
        gamma = _float(gamma, "min_snr_gamma", 0.0, None, lo_open=True)
    fail_at = raw.get("debug_fail_at_step")
    if fail_at is not None:
        fail_at = _int(fail_at, "debug_fail_at_step", 1, steps)

    return Spec(
        job_id=job_id,
        base_model=_str(raw["base_model"], "base_model"),
        type=kind,
        rank=_int(raw["rank"], "rank", 1, 1024),
        alpha=_float(raw["alpha"], "alpha", 0.0, 1e6, lo_open=True),
        dropout=_float(raw["dropout"], "dropout", 0.0, 0.99),
        target_modules=target_modules,
        steps=steps,
        learning_rate=_float(raw["learning_rate"], "learning_rate", 0.0, 1.0, lo_open=True),
        batch_size=_int(raw["batch_size"], "batch_size", 1, 64),
        optimizer=_enum(raw["optimizer"], "optimizer", OPTIMIZERS),
        lr_scheduler=_enum(raw["lr_scheduler"], "lr_scheduler", LR_SCHEDULERS),
        lr_warmup_steps=warmup,
        resolution=resolution,
        trigger_words=_str_list(raw["trigger_words"], "trigger_words", non_empty=False),
        seed=_int(raw["seed"], "seed", 0, 2**63 - 1),
        mixed_precision=_enum(raw.get("mixed_precision", "auto"), "mixed_precision", MIXED_PRECISION),
        gradient_checkpointing=_bool(raw.get("gradient_checkpointing", False), "gradient_checkpointing"),
        cache_latents=_bool(raw.get("cache_latents", True), "cache_latents"),
        min_snr_gamma=gamma,
        noise_offset=_float(raw.get("noise_offset", 0.0), "noise_offset", 0.0, 1.0),
        checkpoint_every=_int(raw.get("checkpoint_every", 250), "checkpoint_every", 1, 1_000_000),
        validation=_validation(raw.get("validation")),
        debug_fail_at_step=fail_at,
        **dreambooth,
    )


def load_spec(path: str | Path) -> Spec:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise TrainerError("bad_spec", f"cannot read spec {path}: {e.strerror or e}") from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise TrainerError("bad_spec", f"spec {path} is not valid JSON: {e}") from e
    return parse_spec(raw)
