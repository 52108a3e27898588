"""End to end on the tiny random SDXL pipeline: events, outputs, loading, resume, NaN, options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ALPHA, RANK, TRIGGER, make_spec, run_trainer
from safetensors import safe_open
from safetensors.torch import load_file

STAGES = ["loading_model", "caching_latents", "training", "saving", "validating", "done"]


def test_events_are_json_lines_in_order(trained):
    run = trained["run"]
    assert [e["stage"] for e in run.of("stage")] == STAGES
    prog = run.of("progress")
    assert [p["step"] for p in prog] == list(range(1, 11))
    for p in prog:
        assert p["total"] == 10
        assert isinstance(p["loss"], float) and p["loss"] > 0
        assert p["it_per_s"] > 0 and p["eta_s"] >= 0
    etas = [p["eta_s"] for p in prog]
    assert etas[-1] == 0
    assert [c["step"] for c in run.of("checkpoint")] == [3, 6, 9, 10]
    done = run.last
    assert done["event"] == "done" and done["job_id"] == "job-1"
    assert done["train_seconds"] > 0 and done["steps"] == 10 and done["resumed_from"] == 0
    kinds = [o["kind"] for o in run.of("output")]
    assert kinds == ["lora_diffusers", "lora_kohya"] + ["validation_image"] * 3
    for o in run.of("output"):
        assert Path(o["path"]).is_absolute() and Path(o["path"]).is_file()


def test_checkpoints_are_pruned_and_no_temp_files_left(trained):
    ck = trained["out"] / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000009.pt", "step-00000010.pt"]
    assert not list(trained["out"].rglob("*.tmp"))


def _meta(path: Path) -> dict:
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata())


def test_both_files_parse_with_metadata(trained):
    out = trained["out"]
    for name in ("model.safetensors", "model.kohya.safetensors"):
        tensors = load_file(out / name)
        assert tensors and all(torch.isfinite(t).all() for t in tensors.values())
        m = _meta(out / name)
        assert m["loraforge.base_model"] == trained["spec"]["base_model"]
        params = json.loads(m["loraforge.params"])
        assert params["rank"] == RANK and params["alpha"] == ALPHA and params["steps"] == 10
        assert m["loraforge.trainer_version"] == "0.1.0"
        assert len(m["loraforge.dataset_hash"]) == 64
        assert m["loraforge.dataset_hash"] == trained["run"].last["dataset_hash"]
        assert json.loads(m["loraforge.trigger_words"]) == [TRIGGER]
        assert m["ss_base_model_version"] == "sdxl_base_v1-0"
        assert m["ss_network_dim"] == str(RANK) and m["ss_network_alpha"] == "6"
        assert m["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
        assert float(m["loraforge.train_seconds"]) > 0


def test_diffusers_file_layout_and_alpha(trained):
    path = trained["out"] / "model.safetensors"
    keys = list(load_file(path))
    assert all(k.startswith("unet.") for k in keys)
    assert any(k.endswith(".to_q.lora_A.weight") for k in keys)
    assert any(k.endswith(".to_out.0.lora_B.weight") for k in keys)
    adapter = json.loads(_meta(path)["lora_adapter_metadata"])
    assert adapter["unet.r"] == RANK and adapter["unet.lora_alpha"] == ALPHA


def test_kohya_keys_and_alpha(trained):
    t = load_file(trained["out"] / "model.kohya.safetensors")
    names = {k.split(".")[0] for k in t}
    assert names and all(n.startswith("lora_unet_") for n in names)
    # sgm naming as kohya-ss writes for SDXL: down_blocks.1.attentions.0 -> input_blocks.4.1
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_out_0" in names
    for n in names:
        assert t[f"{n}.lora_down.weight"].shape[0] == RANK
        assert t[f"{n}.lora_up.weight"].shape[1] == RANK
        a = t[f"{n}.alpha"]
        assert a.dtype == torch.float32 and a.ndim == 0 and a.item() == ALPHA != RANK
    assert len(t) == 3 * len(names)


def _pipe(tiny_model):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unet_out(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=g)
    enc = torch.randn(1, 77, 64, generator=g)
    cond = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return pipe.unet(x, torch.tensor([500]), encoder_hidden_states=enc, added_cond_kwargs=cond).sample


def test_load_lora_weights_and_generate_then_kohya_matches(trained, tiny_model):
    out = trained["out"]
    pipe = _pipe(tiny_model)
    plain = _unet_out(pipe)

    pipe.load_lora_weights(str(out), weight_name="model.safetensors", adapter_name="diffusers")
    with_diffusers = _unet_out(pipe)
    image = pipe("a photo of zxq", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    pipe.unload_lora_weights()
    assert torch.allclose(_unet_out(pipe), plain)

    pipe.load_lora_weights(str(out), weight_name="model.kohya.safetensors", adapter_name="kohya")
    with_kohya = _unet_out(pipe)

    assert (with_diffusers - plain).abs().max() > 1e-6, "the LoRA changes nothing"
    torch.testing.assert_close(with_kohya, with_diffusers, rtol=1e-5, atol=1e-6)


def test_validation_images_and_scores(trained):
    v = trained["run"].of("validation")[0]
    assert [Path(p).name for p in v["images"]] == ["0.png", "1.png", "2.png"]
    from PIL import Image

    for p in v["images"]:
        with Image.open(p) as im:
            assert im.size == (64, 64)
    assert len(v["prompts"]) == 3 and all(TRIGGER in p for p in v["prompts"])
    assert "portrait" in v["prompts"][0] and "street" in v["prompts"][1] and "running" in v["prompts"][2]
    assert v["seeds"] == [1234, 1235, 1236]
    assert len(v["scores"]) == 3 and all(-1.0 <= s <= 1.0 for s in v["scores"])
    assert trained["run"].last["validation"]["scores"] == v["scores"]


def test_resume_equals_uninterrupted_run(tmp_path, trained, tiny_model, images):
    spec = make_spec(tiny_model, validation={"enabled": False}, checkpoint_every=4)
    out = tmp_path / "out"
    first = run_trainer(tmp_path, spec, images, out, "--max-steps-this-run", "5")
    assert first.rc == 10, first.stdout
    assert first.last == {"event": "stopped", "step": 5, "reason": "max_steps_this_run",
                          "checkpoint": str(out / "checkpoints" / "step-00000005.pt")}
    assert not (out / "model.safetensors").exists()

    second = run_trainer(tmp_path, spec, images, out, "--resume")
    assert second.rc == 0, second.stdout
    assert second.last["resumed_from"] == 5
    assert [p["step"] for p in second.of("progress")] == list(range(6, 11))
    # the latent/text-embedding cache on disk was reused: no caching stage the second time
    assert "caching_latents" not in [e["stage"] for e in second.of("stage")]

    a = load_file(trained["out"] / "model.safetensors")
    b = load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7)

    # a checkpoint from other parameters is refused, not silently mixed in
    other = run_trainer(tmp_path, {**spec, "learning_rate": 5e-4}, images, out, "--resume")
    assert other.rc == 2 and other.last["code"] == "checkpoint_mismatch"


def test_nan_loss_stops_with_exit_3(tmp_path, tiny_model, images):
    """Through the real command line: exit status and the last stdout line are the contract."""
    spec = make_spec(tiny_model, debug_fail_at_step=3, validation={"enabled": False})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    p = subprocess.run(
        [sys.executable, "-m", "loraforge_trainer", "train", "--spec", str(tmp_path / "spec.json"),
         "--images", str(images), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert p.returncode == 3, p.stderr[-3000:]
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["step"] for x in lines if x["event"] == "progress"] == [1, 2]
    last = lines[-1]
    assert last["event"] == "error" and last["code"] == "non_finite_loss"
    assert last["reason"] == "non-finite loss at step 3" and last["step"] == 3
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert "non-finite loss at step 3" in p.stderr


def test_options_bucketing_batches_and_uncached_latents(tmp_path, tiny_model):
    """Resolution 128 with mixed aspect ratios (several buckets), batch 2, and every option on."""
    from loraforge_trainer import testing

    imgs = testing.make_images(tmp_path / "imgs", sizes=((256, 64), (250, 70), (64, 256), (128, 128), (130, 120)))
    spec = make_spec(
        tiny_model, resolution=128, batch_size=2, steps=3, lr_scheduler="constant_with_warmup",
        min_snr_gamma=5.0, noise_offset=0.05, gradient_checkpointing=True, cache_latents=False,
        validation={"prompts": ["a", "b", "c"], "steps": 1, "seed": 9},
    )
    run = run_trainer(tmp_path, spec, imgs, tmp_path / "out")
    assert run.rc == 0, run.stdout
    assert len(run.of("progress")) == 3
    assert run.of("validation")[0]["prompts"] == ["a", "b", "c"]
    assert run.of("validation")[0]["seeds"] == [9, 10, 11] and run.of("validation")[0]["scores"] is None
    from PIL import Image

    with Image.open(run.of("validation")[0]["images"][0]) as im:
        assert im.size == (128, 128)
    with safe_open(tmp_path / "out" / "cache" / "latents.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert "0.prompt_embeds" in keys and not any(k.endswith(".latents") for k in keys)
    from loraforge_trainer.dataset import load_dataset

    ds = load_dataset(imgs, [TRIGGER], 128)
    assert sorted(set(ds.buckets)) == [(64, 256), (128, 128), (256, 64)]


def test_adamw_8bit_is_bitsandbytes_with_8_bit_state(tmp_path):
    """bitsandbytes is pinned in requirements.lock, so the test environment has it: the 8-bit
    branch must be taken, and its optimizer state must really be 8-bit."""
    from loraforge_trainer.spec import parse_spec
    from loraforge_trainer.train import make_optimizer

    spec = parse_spec(make_spec(tmp_path, optimizer="adamw_8bit", learning_rate=1e-2))
    # 4096 elements: bitsandbytes keeps smaller tensors' state in 32 bits.
    p = torch.nn.Parameter(torch.ones(64, 64))
    opt = make_optimizer(spec, [p])
    assert type(opt).__name__ == "AdamW8bit" and type(opt).__module__.startswith("bitsandbytes")
    (p * p).sum().backward()
    opt.step()
    assert p.data.mean().item() < 1.0, "a step moved the weights"
    assert opt.state[p]["state1"].dtype == torch.uint8 and opt.state[p]["state2"].dtype == torch.uint8


def test_adamw_8bit_without_bitsandbytes_fails_clearly(tmp_path, monkeypatch):
    from loraforge_trainer.errors import TrainerError
    from loraforge_trainer.spec import parse_spec
    from loraforge_trainer.train import make_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises
    spec = parse_spec(make_spec(tmp_path, optimizer="adamw_8bit"))
    with pytest.raises(TrainerError) as e:
        make_optimizer(spec, [torch.nn.Parameter(torch.zeros(4, 4))])
    assert e.value.code == "optimizer_unavailable" and "bitsandbytes" in e.value.reason
    # Plain AdamW does not need it.
    assert type(make_optimizer(parse_spec(make_spec(tmp_path)), [torch.nn.Parameter(torch.zeros(4))])).__name__ == "AdamW"


def test_sigterm_checkpoints_and_stops_then_resumes(tmp_path, tiny_model, images):
    """Preemption: SIGTERM mid-training → checkpoint, `stopped`, exit 10; --resume finishes."""
    import queue
    import signal
    import threading
    import time

    spec = make_spec(tiny_model, steps=400, checkpoint_every=1000, validation={"enabled": False})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "loraforge_trainer", "train", "--spec", str(tmp_path / "spec.json"),
           "--images", str(images), "--out", str(tmp_path / "out")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    # Lines are read by a thread, so a trainer that hangs without printing fails the test at
    # the deadline instead of blocking it for ever.
    got: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=lambda: ([got.put(x) for x in p.stdout], got.put(None)), daemon=True)
    reader.start()
    lines = []
    deadline = time.monotonic() + 240
    try:
        while True:
            line = got.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"the trainer ended before step 3: {lines}"
            lines.append(json.loads(line))
            if lines[-1]["event"] == "progress" and lines[-1]["step"] == 3:
                p.send_signal(signal.SIGTERM)
                break
        p.wait(timeout=120)
    except (queue.Empty, subprocess.TimeoutExpired):
        p.kill()
        pytest.fail(f"the trainer was silent or did not stop in time; lines so far: {lines}")
    reader.join(timeout=30)
    while (line := got.get(timeout=1)) is not None:
        lines.append(json.loads(line))
    assert p.returncode == 10
    last = lines[-1]
    assert last["event"] == "stopped" and last["reason"] == "signal SIGTERM"
    n = last["step"]
    assert 3 <= n < 400 and Path(last["checkpoint"]).is_file()
    assert lines[-2] == {"event": "checkpoint", "step": n, "path": last["checkpoint"]}

    resumed = run_trainer(tmp_path, {**spec, "steps": 400}, images, tmp_path / "out", "--resume",
                          "--max-steps-this-run", "2")
    assert resumed.rc == 10 and [e["step"] for e in resumed.of("progress")] == [n + 1, n + 2]


def test_bf16_path_keeps_vae_fp32(tmp_path, tiny_model, images):
    """mixed_precision bf16 (the GPU default) through CPU autocast: bf16 UNet, fp32 LoRA weights
    and VAE, validation decoding bf16 latents with the fp32 VAE."""
    spec = make_spec(tiny_model, mixed_precision="bf16", steps=2, validation={"steps": 1})
    run = run_trainer(tmp_path, spec, images, tmp_path / "out")
    assert run.rc == 0, run.stdout
    assert run.last["dtype"] == "bfloat16"
    assert len(run.of("validation")[0]["images"]) == 3
    t = load_file(tmp_path / "out" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in t.values())
