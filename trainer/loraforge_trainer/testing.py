"""Tiny random SDXL-shaped models for tests and benchmarks. No downloads, no real weights.

``python -m loraforge_trainer.testing tiny-sdxl DIR`` writes a diffusers StableDiffusionXL
pipeline folder (UNet with SDXL's text_time conditioning, two CLIP text encoders with a
hand-made tokenizer, a small VAE); ``tiny-clip-vision DIR`` a CLIP image-embedding model folder
for the scorer; ``images DIR`` a few generated training images with captions. The Rust side's
tests use these too. ``sdxl-sized DIR`` writes random weights in SDXL base's own shapes (fp16,
~7 GB) for GPU speed and memory benchmarks (`bench/trainer_gpu.sh`).
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

TE_HIDDEN = 32
TE2_PROJ = 32
TIME_EMBED = 8


def write_tokenizer(folder: Path) -> None:
    """A real CLIPTokenizer over a character-level BPE vocabulary (no merges beyond characters):
    every printable character alone and as a word end (``c</w>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ".,!?'-:;()\""
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(
        vocab_file=str(folder / "vocab.json"),
        merges_file=str(folder / "merges.txt"),
        model_max_length=77,
    )
    tok.save_pretrained(folder)


def tiny_sdxl_components(seed: int = 0) -> dict:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TE2_PROJ,
        cross_attention_dim=TE_HIDDEN + TE_HIDDEN,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    te_cfg = dict(
        vocab_size=1000,
        hidden_size=TE_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    te1 = CLIPTextModel(CLIPTextConfig(**te_cfg))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(projection_dim=TE2_PROJ, **te_cfg))
    return dict(unet=unet, vae=vae, text_encoder=te1, text_encoder_2=te2, scheduler=_scheduler())


def sdxl_sized_components(seed: int = 0) -> dict:
    """Random weights in SDXL base 1.0's shapes (its published UNet, text encoder and VAE
    configs): for measuring speed and memory on a GPU, never for images."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    common = dict(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5,
                  bos_token_id=0, eos_token_id=2, pad_token_id=1)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                       num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu", **common))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                                                     num_hidden_layers=32, projection_dim=1280, hidden_act="gelu",
                                                     **common))
    return dict(unet=unet, vae=vae, text_encoder=te1, text_encoder_2=te2, scheduler=_scheduler())


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


def _save_pipeline(folder: str | Path, components: dict, dtype=None) -> Path:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    tok_dir = folder / "_tok"
    write_tokenizer(tok_dir)
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    pipe = StableDiffusionXLPipeline(tokenizer=tok, tokenizer_2=tok, **components)
    if dtype is not None:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(folder)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return folder


def make_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    return _save_pipeline(folder, tiny_sdxl_components(seed))


def make_sdxl_sized(folder: str | Path, seed: int = 0) -> Path:
    """SDXL-sized random pipeline, saved in fp16 (~7 GB): for GPU benchmarks."""
    import torch

    return _save_pipeline(folder, sdxl_sized_components(seed), dtype=torch.float16)


def make_tiny_clip_vision(folder: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    folder = Path(folder)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=32, patch_size=8, projection_dim=32,
    ))
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def make_images(folder: str | Path, trigger: str = "zxq", sizes=((96, 64), (64, 96), (80, 80), (64, 64)), seed: int = 0) -> Path:
    """Smooth random colour fields of the given (width, height) sizes, with captions; the last
    image has no caption (the trainer falls back to the trigger word)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        base = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        im.save(folder / f"img{i:02d}.png")
        if i < len(sizes) - 1:
            (folder / f"img{i:02d}.txt").write_text(f"a photo of {trigger}, picture {i}")
    return folder


def make_random_lora(base: str | Path, path: str | Path, seed: int = 0, rank: int = 4, std: float = 0.5) -> Path:
    """A diffusers-format UNet LoRA file for ``base`` (what the trainer writes) with random
    ``lora_A`` and ``lora_B`` (std ``std``), strong enough to change every rendered image; for
    tests of sampling without a training run first."""
    from types import SimpleNamespace

    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .export import diffusers_state_and_metadata

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", use_safetensors=True)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, std)
    state = {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    tensors, meta = diffusers_state_and_metadata(state, SimpleNamespace(rank=rank, alpha=float(rank)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def main(argv: list[str]) -> int:
    makers = {"tiny-sdxl": make_tiny_sdxl, "sdxl-sized": make_sdxl_sized,
              "tiny-clip-vision": make_tiny_clip_vision, "images": make_images}
    if len(argv) != 2 or argv[0] not in makers:
        print(f"usage: python -m loraforge_trainer.testing {{{'|'.join(makers)}}} DIR", file=sys.stderr)
        return 2
    fn = makers[argv[0]]
    print(fn(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
