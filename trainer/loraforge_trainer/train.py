"""The training run: load SDXL, cache latents and text embeddings, train a UNet LoRA with
checkpoints, write both LoRA files, then validate. Driven by :func:`run`."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re
import signal
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as st_save

from . import __version__
from .buckets import plan_batches
from .checkpoint import load_latest, save_checkpoint
from .classimages import ensure_class_images
from .dataset import Dataset, load_dataset, load_pixels
from .errors import EXIT_OOM, EXIT_STOPPED, NonFiniteLoss, StopRequested, TrainerError
from .events import emit, log, stage
from .export import build_metadata, check_kohya_names, write_outputs
from .fsutil import atomic_write_bytes
from .spec import Spec

_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Every model's weights are read from safetensors files only: a pickled ``.bin`` can run code when
# loaded, and remote code (``trust_remote_code``) is never allowed. Passed to every
# ``from_pretrained`` that loads weights; a folder or repo without safetensors weights fails to load.
SAFE_WEIGHTS = {"use_safetensors": True}
# diffusers' get_scheduler names for the spec's lr_scheduler values.
_SCHEDULERS = {
    "cosine_with_warmup": "cosine",
    "constant": "constant",
    "constant_with_warmup": "constant_with_warmup",
    "linear": "linear",
}


# ---------------------------------------------------------------------------------------------
# setup


def resolve_base_model(name: str) -> str:
    """A local diffusers folder (must hold model_index.json) or a Hugging Face repo id."""
    p = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) or p.exists():
        if not p.is_dir():
            raise TrainerError("missing_model", f"base model folder {name} does not exist")
        if not (p / "model_index.json").is_file():
            raise TrainerError("missing_model", f"base model folder {name} is not a diffusers pipeline (no model_index.json)")
        return str(p.resolve())
    if not _HF_ID.fullmatch(name):
        raise TrainerError("bad_spec", f"spec field `base_model`: {name!r} is neither a folder nor a Hugging Face id", field="base_model")
    return name


def _loading(what: str, fn, base: str, **kwargs):
    try:
        return fn(base, **kwargs)
    except (OSError, ValueError) as e:
        # A hub id that cannot be fetched now may be fetchable later; a broken local folder not.
        local = Path(base).is_dir()
        reason = f"cannot load {what} from {base}: {e}".splitlines()[0][:500]
        if "safetensors" in str(e):
            reason += " (weights are loaded from .safetensors files only)"
        raise TrainerError("bad_model" if local else "model_unavailable", reason,
                           retryable=not local) from e


def pick_device_and_dtype(spec: Spec) -> tuple[torch.device, torch.dtype]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.mixed_precision == "bf16":
        return device, torch.bfloat16
    if spec.mixed_precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float32


@dataclass
class Cache:
    prompt_embeds: list[torch.Tensor]  # (77, te1+te2 hidden), fp32, CPU
    pooled: list[torch.Tensor]  # (te2 projection,)
    time_ids: list[torch.Tensor]  # (6,)
    latents: list[torch.Tensor] | None  # (4, h/8, w/8), scaled; None when cache_latents is off


def _cache_key(spec: Spec, base: str, ds: Dataset) -> str:
    d = {"dataset": ds.hash, "base": base, "res": spec.resolution, "seed": spec.seed,
         "latents": spec.cache_latents, "v": __version__}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _load_disk_cache(path: Path, key: str, n: int, with_latents: bool) -> Cache | None:
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            get = f.get_tensor
            return Cache(
                [get(f"{i}.prompt_embeds") for i in range(n)],
                [get(f"{i}.pooled") for i in range(n)],
                [get(f"{i}.time_ids") for i in range(n)],
                [get(f"{i}.latents") for i in range(n)] if with_latents else None,
            )
    except Exception as e:
        log(f"latent cache {path} unusable ({e}); recomputing")
        return None


def _save_disk_cache(path: Path, key: str, c: Cache) -> None:
    t: dict[str, torch.Tensor] = {}
    for i in range(len(c.pooled)):
        t[f"{i}.prompt_embeds"] = c.prompt_embeds[i].contiguous()
        t[f"{i}.pooled"] = c.pooled[i].contiguous()
        t[f"{i}.time_ids"] = c.time_ids[i].contiguous()
        if c.latents is not None:
            t[f"{i}.latents"] = c.latents[i].contiguous()
    atomic_write_bytes(path, st_save(t, metadata={"key": key}))


def load_vae(base: str, device: torch.device):
    from diffusers import AutoencoderKL

    # Always fp32: SDXL's VAE overflows in fp16 (NaNs, black images).
    vae = _loading("the VAE", AutoencoderKL.from_pretrained, base, subfolder="vae", dtype=torch.float32, **SAFE_WEIGHTS)
    return vae.to(device).eval().requires_grad_(False)


def encode_latents(vae, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    dist = vae.encode(pixels.to(vae.device, torch.float32)).latent_dist
    lat = dist.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        lat = lat - shift
    return lat * vae.config.scaling_factor


@torch.no_grad()
def build_cache(spec: Spec, base: str, datasets: list[Dataset], device: torch.device, vae) -> list[Cache]:
    """One :class:`Cache` per dataset (the subject's images, and DreamBooth's class images);
    the text encoders are loaded once for all."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok1 = _loading("tokenizer", CLIPTokenizer.from_pretrained, base, subfolder="tokenizer")
    tok2 = _loading("tokenizer_2", CLIPTokenizer.from_pretrained, base, subfolder="tokenizer_2")
    te1 = _loading("text_encoder", CLIPTextModel.from_pretrained, base, subfolder="text_encoder", dtype=torch.float32, **SAFE_WEIGHTS)
    te2 = _loading("text_encoder_2", CLIPTextModelWithProjection.from_pretrained, base, subfolder="text_encoder_2", dtype=torch.float32, **SAFE_WEIGHTS)
    te1.to(device).eval()
    te2.to(device).eval()

    stage("caching_latents")
    caches = []
    for ds in datasets:
        prompt_embeds, pooled, time_ids, latents = [], [], [], []
        gen = torch.Generator().manual_seed(spec.seed)
        for i, it in enumerate(ds.items):
            hidden = []
            for tok, te in ((tok1, te1), (tok2, te2)):
                ids = tok(it.caption, padding="max_length", max_length=tok.model_max_length,
                          truncation=True, return_tensors="pt").input_ids.to(device)
                out = te(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2][0])
                if te is te2:
                    pooled.append(out.text_embeds[0].float().cpu())
            prompt_embeds.append(torch.cat(hidden, dim=-1).float().cpu())
            time_ids.append(torch.tensor(it.add_time_ids, dtype=torch.float32))
            if spec.cache_latents:
                px = torch.from_numpy(load_pixels(it))[None]
                latents.append(encode_latents(vae, px, gen)[0].float().cpu())
            log(f"cached {i + 1}/{len(ds.items)}: {it.path.name} bucket {it.bucket[0]}x{it.bucket[1]}")
        caches.append(Cache(prompt_embeds, pooled, time_ids, latents if spec.cache_latents else None))
    del te1, te2
    return caches


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def load_unet_with_lora(spec: Spec, base: str, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from peft import LoraConfig

    unet = _loading("the UNet", UNet2DConditionModel.from_pretrained, base, subfolder="unet", dtype=dtype, **SAFE_WEIGHTS)
    unet.requires_grad_(False)
    # PyTorch scaled_dot_product_attention (flash / memory-efficient kernels on GPU).
    unet.set_attn_processor(AttnProcessor2_0())
    unet.to(device)
    cfg = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                     target_modules=list(spec.target_modules), init_lora_weights="gaussian")
    try:
        unet.add_adapter(cfg)
    except ValueError as e:
        raise TrainerError("bad_spec", f"spec field `target_modules`: {e}", field="target_modules") from e
    # Trainable LoRA weights stay fp32 even when the frozen base runs in bf16.
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if spec.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet


def lora_params(unet) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in unet.named_parameters() if p.requires_grad]


def make_optimizer(spec: Spec, params: list[torch.nn.Parameter]):
    kw = dict(lr=spec.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if spec.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb  # optional
        except Exception as e:  # ImportError, or a broken CUDA setup inside bitsandbytes
            raise TrainerError("optimizer_unavailable",
                               f"optimizer adamw_8bit needs bitsandbytes, which cannot be imported here: {e}") from e
        return bnb.optim.AdamW8bit(params, **kw)
    return torch.optim.AdamW(params, **kw)


# ---------------------------------------------------------------------------------------------
# the loop


class _StopFlag:
    def __init__(self):
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, _frame):
        self.reason = f"signal {signal.Signals(signum).name}"
        log(f"{self.reason}: will checkpoint and stop after this step")

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def batches_for_epoch(ds: Dataset, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """A function of (seed, epoch) only, so a resumed run sees the same data order."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    order = torch.randperm(len(ds.items), generator=g).tolist()
    return plan_batches(ds.buckets, batch_size, order)


def _rng_state(noise_gen: torch.Generator) -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "noise": noise_gen.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any], noise_gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    noise_gen.set_state(st["noise"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def class_batch(n_class: int, batch_size: int, seed: int, step: int, perms: dict[int, list[int]]) -> list[int]:
    """The class images trained beside step ``step``'s batch: consecutive slices of a shuffled
    order of the class set, reshuffled each pass (a function of (seed, step) only, so a resumed
    run sees the same ones). ``perms`` memoizes the orders by pass."""
    picked = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        rnd, pos = divmod(k, n_class)
        if rnd not in perms:
            g = torch.Generator().manual_seed((seed * 1_000_033 + rnd + 7_919) % (2**63))
            perms[rnd] = torch.randperm(n_class, generator=g).tolist()
        picked.append(perms[rnd][pos])
    return picked


def default_class_images_cache(out: Path) -> Path:
    """``LORAFORGE_CLASS_IMAGES_CACHE`` (the worker sets it to a folder shared by the host's jobs),
    else the job's own ``cache/class-images``."""
    env = os.environ.get("LORAFORGE_CLASS_IMAGES_CACHE")
    return Path(env) if env else out / "cache" / "class-images"


def run(spec: Spec, images_dir: str, out_dir: str, resume: bool = False,
        max_steps_this_run: int | None = None, class_images_cache: str | None = None) -> dict[str, Any]:
    """One training run. Emits events; returns the summary that goes into the ``done`` event.
    Raises TrainerError / NonFiniteLoss / StopRequested."""
    t_start = time.monotonic()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device, dtype = pick_device_and_dtype(spec)
    log(f"loraforge trainer {__version__}: torch {torch.__version__}, device {device}, dtype {dtype}")
    torch.manual_seed(spec.seed)

    stage("loading_model")
    base = resolve_base_model(spec.base_model)
    ds = load_dataset(images_dir, spec.trigger_words, spec.resolution)
    log(f"{len(ds.items)} images, dataset hash {ds.hash[:16]}…, buckets {sorted(set(ds.buckets))}")

    ckpt = None
    if resume:
        found = load_latest(out)
        if found is None:
            log("--resume: no checkpoint yet, starting at step 0")
        else:
            ckpt, ckpt_path = found
            if ckpt.get("fingerprint") != spec.training_fingerprint() or ckpt.get("dataset_hash") != ds.hash:
                raise TrainerError("checkpoint_mismatch",
                                   f"checkpoint {ckpt_path.name} was made with other parameters or images; "
                                   "remove it or train into a new --out folder")
            log(f"resuming from {ckpt_path.name} (step {ckpt['step']})")

    # DreamBooth: the class images (from the host's cache, or generated now by the base model).
    class_ds = None
    class_set = None
    if spec.prior_preservation:
        cache_root = Path(class_images_cache) if class_images_cache else default_class_images_cache(out)
        class_set = ensure_class_images(spec, base, cache_root, device, dtype)
        emit("class_images", dir=str(class_set.folder), count=class_set.count, generated=class_set.generated)
        _free(device)
        class_ds = load_dataset(class_set.folder, [], spec.resolution)

    wanted = [(out / "cache" / "latents.safetensors", ds)]
    if class_ds is not None:
        wanted.append((out / "cache" / "class-latents.safetensors", class_ds))
    caches = [_load_disk_cache(p, _cache_key(spec, base, d), len(d.items), spec.cache_latents) for p, d in wanted]
    vae = None
    missing = [i for i, c in enumerate(caches) if c is None]
    if missing or not spec.cache_latents:
        vae = load_vae(base, device)
    if missing:
        built = build_cache(spec, base, [wanted[i][1] for i in missing], device, vae)
        for i, c in zip(missing, built):
            _save_disk_cache(wanted[i][0], _cache_key(spec, base, wanted[i][1]), c)
            caches[i] = c
        _free(device)
    else:
        log(f"using cached latents and text embeddings from {out / 'cache'}")
    cache = caches[0]
    class_cache = caches[1] if class_ds is not None else None
    pixels = class_pixels = None
    if not spec.cache_latents:
        pixels = [torch.from_numpy(load_pixels(it)) for it in ds.items]
        if class_ds is not None:
            class_pixels = [torch.from_numpy(load_pixels(it)) for it in class_ds.items]
    elif vae is not None:
        del vae
        vae = None
        _free(device)

    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_snr

    noise_scheduler = _loading("the noise scheduler", DDPMScheduler.from_pretrained, base, subfolder="scheduler")
    unet = load_unet_with_lora(spec, base, device, dtype)
    named = lora_params(unet)
    from peft.utils import get_peft_model_state_dict

    try:
        check_kohya_names(sorted({k[: -len('.lora_A.weight')] for k in get_peft_model_state_dict(unet) if k.endswith('.lora_A.weight')}), unet.config)
    except ValueError as e:
        raise TrainerError("bad_spec", f"spec field `target_modules`: {e}", field="target_modules") from e
    n_train = sum(p.numel() for _, p in named)
    log(f"LoRA: {len(named)} tensors, {n_train:,} trainable parameters")
    optimizer = make_optimizer(spec, [p for _, p in named])
    lr_sched = get_scheduler(_SCHEDULERS[spec.lr_scheduler], optimizer=optimizer,
                             num_warmup_steps=spec.lr_warmup_steps, num_training_steps=spec.steps)
    noise_gen = torch.Generator().manual_seed(spec.seed + 1)

    start = 0
    if ckpt is not None:
        with torch.no_grad():
            by_name = dict(named)
            for n, t in ckpt["lora"].items():
                by_name[n].copy_(t)
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_sched.load_state_dict(ckpt["lr_scheduler"])
        _set_rng_state(ckpt["rng"], noise_gen)
        start = int(ckpt["step"])
        del ckpt

    def checkpoint(step: int) -> Path:
        state = {
            "lora": {n: p.detach().cpu().clone() for n, p in named},
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_sched.state_dict(),
            "rng": _rng_state(noise_gen),
            "fingerprint": spec.training_fingerprint(),
            "dataset_hash": ds.hash,
            "trainer_version": __version__,
        }
        path = save_checkpoint(out, step, state)
        emit("checkpoint", step=step, path=str(path))
        return path

    alphas_T = noise_scheduler.config.num_train_timesteps
    pred_type = noise_scheduler.config.prediction_type
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32 else nullcontext())
    n_batches = len(batches_for_epoch(ds, spec.batch_size, spec.seed, 0))

    def denoise_loss(c: Cache, px: list[torch.Tensor] | None, batch: list[int]) -> torch.Tensor:
        """The mean denoising loss of one batch of cached items (noise and timesteps from
        ``noise_gen``)."""
        if c.latents is not None:
            latents = torch.stack([c.latents[i] for i in batch]).to(device)
        else:
            with torch.no_grad():
                latents = encode_latents(vae, torch.stack([px[i] for i in batch]), noise_gen).float()
        embeds = torch.stack([c.prompt_embeds[i] for i in batch]).to(device, dtype)
        pooled = torch.stack([c.pooled[i] for i in batch]).to(device, dtype)
        time_ids = torch.stack([c.time_ids[i] for i in batch]).to(device, dtype)

        bsz = latents.shape[0]
        noise = torch.randn(latents.shape, generator=noise_gen).to(device)
        if spec.noise_offset:
            noise = noise + spec.noise_offset * torch.randn((bsz, latents.shape[1], 1, 1), generator=noise_gen).to(device)
        timesteps = torch.randint(0, alphas_T, (bsz,), generator=noise_gen).to(device).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if pred_type == "epsilon":
            target = noise
        elif pred_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise TrainerError("bad_model", f"unsupported prediction_type {pred_type!r}")

        with autocast:
            pred = unet(noisy.to(dtype), timesteps, encoder_hidden_states=embeds,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        per_item = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if spec.min_snr_gamma is not None:
            snr = compute_snr(noise_scheduler, timesteps)
            w = torch.clamp(snr, max=spec.min_snr_gamma)
            w = w / (snr + 1) if pred_type == "v_prediction" else w / snr
            per_item = per_item * w
        return per_item.mean()

    class_perms: dict[int, list[int]] = {}
    prior_loss_val: float | None = None

    stage("training")
    stop = _StopFlag()
    stop.install()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_train = time.monotonic()
    times: deque[float] = deque(maxlen=20)
    loss_val = float("nan")
    steps_this_run = 0
    epoch_cache: tuple[int, list[list[int]]] | None = None
    try:
        for step in range(start, spec.steps):
            t0 = time.monotonic()
            epoch, idx = divmod(step, n_batches)
            if epoch_cache is None or epoch_cache[0] != epoch:
                epoch_cache = (epoch, batches_for_epoch(ds, spec.batch_size, spec.seed, epoch))
            batch = epoch_cache[1][idx]

            loss = denoise_loss(cache, pixels, batch)
            if spec.debug_fail_at_step is not None and step + 1 == spec.debug_fail_at_step:
                loss = loss * float("nan")
            loss_val = float(loss.detach())
            if not math.isfinite(loss_val):
                raise NonFiniteLoss(step + 1, loss_val)
            extra: dict[str, Any] = {}
            if class_cache is not None:
                # Prior preservation: the class images' loss, on its own graph (backward one
                # after the other, so only one batch's activations are alive at a time).
                loss.backward()
                cbatch = class_batch(len(class_ds.items), spec.batch_size, spec.seed, step, class_perms)
                prior = denoise_loss(class_cache, class_pixels, cbatch)
                prior_val = float(prior.detach())
                if not math.isfinite(prior_val):
                    raise NonFiniteLoss(step + 1, prior_val)
                loss = spec.prior_loss_weight * prior
                extra = {"instance_loss": round(loss_val, 6), "prior_loss": round(prior_val, 6)}
                prior_loss_val = prior_val
                loss_val = loss_val + spec.prior_loss_weight * prior_val

            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
            if not torch.isfinite(gnorm):
                raise TrainerError("non_finite_loss", f"non-finite gradient at step {step + 1}", 3, step=step + 1)
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)

            done_steps = step + 1
            steps_this_run += 1
            times.append(time.monotonic() - t0)
            it_s = len(times) / sum(times) if sum(times) > 0 else None
            eta = (spec.steps - done_steps) / it_s if it_s else None
            emit("progress", step=done_steps, total=spec.steps, loss=round(loss_val, 6),
                 lr=lr_sched.get_last_lr()[0], it_per_s=round(it_s, 4) if it_s else None,
                 eta_s=round(eta, 1) if eta is not None else None, **extra)

            want_stop = stop.reason or (max_steps_this_run is not None and steps_this_run >= max_steps_this_run)
            if done_steps == spec.steps or done_steps % spec.checkpoint_every == 0 or want_stop:
                path = checkpoint(done_steps)
                if want_stop and done_steps < spec.steps:
                    raise StopRequested(done_steps, stop.reason or "max_steps_this_run", str(path))
    except torch.cuda.OutOfMemoryError as e:
        raise TrainerError("out_of_memory", f"out of GPU memory: {e}".splitlines()[0], EXIT_OOM) from e
    finally:
        stop.restore()
    train_seconds = time.monotonic() - t_train
    # Peak GPU memory of the training loop (model, optimizer, activations); None on the CPU.
    peak_gpu_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    stage("saving")
    peft_state = get_peft_model_state_dict(unet)
    meta = build_metadata(spec, ds.hash, __version__, {
        "loraforge.steps": str(spec.steps),
        "loraforge.train_seconds": f"{train_seconds:.3f}",
        "loraforge.num_images": str(len(ds.items)),
    })
    files = write_outputs(out, peft_state, unet.config, spec, meta)
    for kind, path in files.items():
        emit("output", path=str(path), kind=kind, bytes=path.stat().st_size)
    del unet, optimizer, named, peft_state
    if vae is not None:
        del vae
    _free(device)

    summary: dict[str, Any] = {
        "train_seconds": round(train_seconds, 3),
        "steps": spec.steps,
        "resumed_from": start,
        "final_loss": loss_val,
        "outputs": {k: str(v) for k, v in files.items()},
        "dataset_hash": ds.hash,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "peak_gpu_memory_bytes": peak_gpu_bytes,
    }
    if class_set is not None:
        summary["prior_preservation"] = {
            "class_prompt": spec.class_prompt, "class_images": str(class_set.folder), "count": class_set.count,
            "generated": class_set.generated, "prior_loss_weight": spec.prior_loss_weight,
            "final_prior_loss": prior_loss_val,
        }
    if spec.validation.enabled:
        from .validate import validate

        stage("validating")
        summary["validation"] = validate(spec, base, ds, out, files["lora_diffusers"], device, dtype)
    summary["total_seconds"] = round(time.monotonic() - t_start, 3)
    return summary
