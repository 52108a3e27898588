"""Writing the trained LoRA: ``model.safetensors`` (diffusers) and ``model.kohya.safetensors``
(kohya-ss / ComfyUI / A1111), both with loraforge's metadata."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from .fsutil import atomic_write_bytes

DIFFUSERS_FILE = "model.safetensors"
KOHYA_FILE = "model.kohya.safetensors"

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str, name: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _RESNET:
        raise ValueError(f"no kohya name for UNet module {name}")
    return _RESNET[head] + (f".{tail}" if tail else "")


def sgm_module_name(name: str, unet_config: Any) -> str:
    """Maps a diffusers SDXL UNet module name (``down_blocks.1.attentions.0.…``) to the sgm/LDM
    name kohya-ss uses for SDXL (``input_blocks.4.1.…``). Raises ``ValueError`` for a module it
    has no mapping for."""
    L = int(unet_config.layers_per_block if not isinstance(unet_config.layers_per_block, (list, tuple)) else unet_config.layers_per_block[0])
    if isinstance(unet_config.layers_per_block, (list, tuple)) and len(set(unet_config.layers_per_block)) > 1:
        raise ValueError("kohya export needs the same layers_per_block for every block")
    if name in _TOP:
        return _TOP[name]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + i * (L + 1) + j}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + i * (L + 1) + j}.0.{_resnet(rest, name)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", name):
        return f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", name):
        return f"middle_block.{0 if m[1] == '0' else 2}.{_resnet(m[2], name)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{i * (L + 1) + j}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{i * (L + 1) + j}.0.{_resnet(rest, name)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", name):
        i = int(m[1])
        has_attn = "CrossAttn" in unet_config.up_block_types[i]
        return f"output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}.conv"
    raise ValueError(f"no kohya name for UNet module {name}")


def kohya_module_name(name: str, unet_config: Any) -> str:
    return "lora_unet_" + sgm_module_name(name, unet_config).replace(".", "_")


def lora_modules(peft_state: dict[str, torch.Tensor]) -> list[str]:
    """Module names (``…to_q``) from a peft LoRA state dict (``…to_q.lora_A.weight``)."""
    return sorted({k[: -len(".lora_A.weight")] for k in peft_state if k.endswith(".lora_A.weight")})


def check_kohya_names(module_names: list[str], unet_config: Any) -> None:
    """Fails early (before training) when a targeted module has no kohya name."""
    seen: dict[str, str] = {}
    for n in module_names:
        k = kohya_module_name(n, unet_config)
        if k in seen:
            raise ValueError(f"UNet modules {seen[k]} and {n} map to the same kohya name {k}")
        seen[k] = n


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def build_metadata(spec, dataset_hash: str, trainer_version: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    meta = {
        "loraforge.base_model": spec.base_model,
        "loraforge.params": json.dumps(spec.to_json(), sort_keys=True),
        "loraforge.trainer_version": trainer_version,
        "loraforge.dataset_hash": dataset_hash,
        "loraforge.trigger_words": json.dumps(spec.trigger_words),
        "loraforge.job_id": spec.job_id,
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": _fmt_number(spec.alpha),
        "ss_resolution": f"({spec.resolution}, {spec.resolution})",
        "ss_learning_rate": repr(spec.learning_rate),
        "ss_max_train_steps": str(spec.steps),
        "ss_seed": str(spec.seed),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": f"loraforge {spec.job_id}",
        "modelspec.resolution": f"{spec.resolution}x{spec.resolution}",
    }
    if spec.trigger_words:
        meta["modelspec.trigger_phrase"] = ", ".join(spec.trigger_words)
    meta.update(extra or {})
    return meta


def diffusers_state_and_metadata(peft_state: dict[str, torch.Tensor], spec) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What ``StableDiffusionXLPipeline.save_lora_weights`` writes for this UNet LoRA (keys
    ``unet.<module>.lora_A.weight``/``lora_B``, and ``lora_adapter_metadata`` holding ``r`` and
    ``lora_alpha`` so ``load_lora_weights`` rebuilds the exact scale), read back from a scratch
    folder so the layout always follows the installed diffusers."""
    from diffusers import StableDiffusionXLPipeline

    adapter_meta = {
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        # Dropout is for training only. Recorded here it would make diffusers build Dropout
        # modules that stay active (train mode) in a freshly loaded pipeline; the trained value
        # is in loraforge.params.
        "lora_dropout": 0.0,
        "target_modules": lora_modules(peft_state),
        "init_lora_weights": "gaussian",
        "bias": "none",
    }
    with tempfile.TemporaryDirectory(prefix="loraforge-export-") as tmp:
        StableDiffusionXLPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=peft_state,
            unet_lora_adapter_metadata=adapter_meta,
            weight_name="x.safetensors",
        )
        tensors, meta = {}, {}
        with safe_open(Path(tmp) / "x.safetensors", framework="pt") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    return tensors, meta


def kohya_state(peft_state: dict[str, torch.Tensor], unet_config: Any, alpha: float) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for mod in lora_modules(peft_state):
        k = kohya_module_name(mod, unet_config)
        down = peft_state[f"{mod}.lora_A.weight"]
        out[f"{k}.lora_down.weight"] = down.contiguous()
        out[f"{k}.lora_up.weight"] = peft_state[f"{mod}.lora_B.weight"].contiguous()
        out[f"{k}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


def verify_file(path: Path, expect_keys: int) -> None:
    """Re-reads a written LoRA file: it parses, has the expected tensors, all finite."""
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        if len(keys) != expect_keys:
            raise RuntimeError(f"{path.name}: {len(keys)} tensors written, {expect_keys} expected")
        for k in keys:
            t = f.get_tensor(k)
            if not torch.isfinite(t).all():
                raise RuntimeError(f"{path.name}: tensor {k} has non-finite values")


def write_outputs(out_dir: Path, peft_state: dict[str, torch.Tensor], unet_config: Any, spec, metadata: dict[str, str]) -> dict[str, Path]:
    """Writes both files atomically and returns ``{"lora_diffusers": path, "lora_kohya": path}``."""
    peft_state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in peft_state.items()}

    d_tensors, d_meta = diffusers_state_and_metadata(peft_state, spec)
    d_meta.update(metadata)
    d_path = atomic_write_bytes(out_dir / DIFFUSERS_FILE, st_save(d_tensors, metadata=d_meta))
    verify_file(d_path, len(d_tensors))

    k_tensors = kohya_state(peft_state, unet_config, spec.alpha)
    k_meta = {"format": "pt", **metadata}
    k_path = atomic_write_bytes(out_dir / KOHYA_FILE, st_save(k_tensors, metadata=k_meta))
    verify_file(k_path, len(k_tensors))
    return {"lora_diffusers": d_path, "lora_kohya": k_path}
