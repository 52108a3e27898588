"""PRD 2's quality validation: three images (character-, scene- and action-focused prompts) in
one batch with fixed seeds, generated from the base model with the *written* LoRA file loaded
(so the file itself is what gets checked), and optionally scored against the training images
with a local CLIP image-embedding model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .dataset import Dataset
from .errors import EXIT_VALIDATION, TrainerError
from .events import emit, log
from .fsutil import atomic_write
from .train import SAFE_WEIGHTS


def default_prompts(trigger: str) -> list[str]:
    """PRD 2's three validation prompts: character-, scene- and action-focused."""
    return [
        f"a portrait photo of {trigger}, detailed face, looking at the camera, soft studio lighting",
        f"{trigger} standing in a busy city street at sunset, full body, wide shot, detailed background",
        f"{trigger} running and jumping through a park, dynamic pose, motion, action shot",
    ]


def validation_prompts(spec) -> list[str]:
    if spec.validation.prompts is not None:
        return list(spec.validation.prompts)
    return default_prompts(spec.trigger_words[0] if spec.trigger_words else "the character")


def _save_png(path: Path, image) -> Path:
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def load_pipeline(base: str, device: torch.device, dtype: torch.dtype, lora_file: Path | None = None):
    """The base model's SDXL pipeline (VAE in fp32), with ``lora_file`` loaded when given, in
    eval mode on ``device``."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", dtype=torch.float32, **SAFE_WEIGHTS)
    pipe = StableDiffusionXLPipeline.from_pretrained(base, vae=vae, dtype=dtype, **SAFE_WEIGHTS)
    if lora_file is not None:
        pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name="loraforge")
    pipe.to(device)
    pipe.unet.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.inference_mode()
def sample(pipe, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float, resolution: int) -> list:
    """One batch: image i from ``prompts[i]`` with a CPU generator seeded ``seeds[i]``; PIL images."""
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    latents = pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
                   height=resolution, width=resolution, generator=gens, output_type="latent").images
    # Decode in fp32 ourselves: the pipeline only upcasts an fp16 VAE, and feeds bf16 latents to
    # an fp32 VAE as they are.
    vae = pipe.vae
    latents = latents.to(vae.device, torch.float32) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        latents = latents + shift
    decoded = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil")


def generate(spec, base: str, lora_file: Path, device: torch.device, dtype: torch.dtype, out_dir: Path) -> tuple[list[Path], list[str], list[int]]:
    pipe = load_pipeline(base, device, dtype, lora_file)
    prompts = validation_prompts(spec)
    seed = spec.validation.seed if spec.validation.seed is not None else spec.seed
    seeds = [seed + i for i in range(len(prompts))]
    images = sample(pipe, prompts, seeds, spec.validation.steps, spec.validation.guidance_scale, spec.resolution)
    paths = [_save_png(out_dir / "validation" / f"{i}.png", im) for i, im in enumerate(images)]
    del pipe
    return paths, prompts, seeds


@torch.no_grad()
def score(scorer: str, images: list[Path], ds: Dataset, device: torch.device) -> list[float]:
    """For each generated image, the mean cosine similarity of its CLIP image embedding to the
    embeddings of all training images."""
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

    try:
        model = CLIPVisionModelWithProjection.from_pretrained(scorer, local_files_only=True, **SAFE_WEIGHTS).to(device).eval()
        proc = AutoImageProcessor.from_pretrained(scorer, local_files_only=True)
    except (OSError, ValueError) as e:
        raise TrainerError("missing_scorer", f"cannot load the scoring model from {scorer}: {e}") from e

    def embed(paths: list[Path]) -> torch.Tensor:
        ims = []
        for p in paths:
            with Image.open(p) as im:
                ims.append(im.convert("RGB"))
        px = proc(images=ims, return_tensors="pt")["pixel_values"].to(device, model.dtype)
        e = model(pixel_values=px).image_embeds.float()
        return torch.nn.functional.normalize(e, dim=-1)

    gen = embed(images)
    ref = embed([it.path for it in ds.items])
    return [round(float(s), 6) for s in (gen @ ref.T).mean(dim=1)]


def validate(spec, base: str, ds: Dataset, out_dir: Path, lora_file: Path, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    try:
        paths, prompts, seeds = generate(spec, base, lora_file, device, dtype, out_dir)
    except TrainerError:
        raise
    except Exception as e:
        raise TrainerError("validation_failed", f"validation images could not be generated: {e}", EXIT_VALIDATION) from e
    for p in paths:
        emit("output", path=str(p), kind="validation_image")
    scores = None
    if spec.validation.scorer:
        scores = score(spec.validation.scorer, paths, ds, device)
        log(f"validation scores: {scores}")
    result = {"images": [str(p) for p in paths], "prompts": prompts, "seeds": seeds,
              "scores": scores, "scorer": spec.validation.scorer}
    emit("validation", **result)
    return result
