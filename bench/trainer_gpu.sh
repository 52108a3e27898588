#!/usr/bin/env bash
# Trainer speed and peak GPU memory on SDXL-sized random weights (SDXL base 1.0's UNet, text
# encoder and VAE shapes; `python -m loraforge_trainer.testing sdxl-sized`), batch 1, rank 8, with
# and without latent caching and gradient checkpointing: the four combinations, one trainer run
# each, through the real command line.
#
#   bench/trainer_gpu.sh [STEPS] [RESOLUTION]        (defaults: 30 steps, 1024 px)
#
# Needs a CUDA GPU; without one it says so and exits 2. For checking the script itself on a CPU:
# LORAFORGE_BENCH_MODEL=tiny LORAFORGE_BENCH_ALLOW_CPU=1 bench/trainer_gpu.sh 4 64.
# LORAFORGE_BENCH_WORK=DIR keeps the generated model (~7 GB) there between runs.
#
# Prints one markdown table row per combination: steady it/s (the trainer's mean over its last
# 20 steps, as it reports), it/s over the whole loop (first steps included), peak GPU memory of
# the training loop (torch.cuda.max_memory_allocated, from the trainer's `done` line) and the
# process wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-30}"
res="${2:-1024}"

bash scripts/trainer-env.sh >&2
py="${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/venv-trainer/bin/python"
work="${LORAFORGE_BENCH_WORK:-$(mktemp -d)}"
mkdir -p "$work"
export HF_HUB_OFFLINE=1

if [ "${LORAFORGE_BENCH_ALLOW_CPU:-0}" != 1 ]; then
    "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)' || {
        echo "no CUDA GPU here: this benchmark measures GPU speed (LORAFORGE_BENCH_ALLOW_CPU=1 to check the script)" >&2
        exit 2
    }
fi

kind="${LORAFORGE_BENCH_MODEL:-sdxl-sized}"
case "$kind" in tiny) kind=tiny-sdxl ;; esac
model="$work/$kind"
if [ ! -f "$model/model_index.json" ]; then
    echo "building the $kind random pipeline in $model" >&2
    "$py" -m loraforge_trainer.testing "$kind" "$model" >/dev/null
fi

"$py" - "$model" "$work" "$steps" "$res" "$py" <<'PY'
import json, subprocess, sys, time
from pathlib import Path

import numpy as np
from PIL import Image

model, work, steps, res, py = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
images = work / f"images-{res}"
if not images.exists():
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(images / f"img{i}.png")
        (images / f"img{i}.txt").write_text(f"a photo of zxq, picture {i}")

def device_name():
    out = subprocess.run([py, "-c", "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"],
                         capture_output=True, text=True)
    return out.stdout.strip()

print(f"device: {device_name()}; {steps} steps at {res}², batch 1, rank 8, bf16 on CUDA (VAE fp32), SDPA")
print("| cache latents | gradient checkpointing | it/s (steady) | it/s (whole loop) | peak GPU memory GiB | process wall s |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for cache in (True, False):
    for ckpt in (False, True):
        out = work / f"out-{res}-{cache}-{ckpt}"
        spec = {"job_id": "bench", "base_model": model, "type": "lora", "rank": 8, "alpha": 8, "dropout": 0.0,
                "target_modules": ["to_k", "to_q", "to_v", "to_out.0"], "steps": steps, "learning_rate": 1e-4,
                "batch_size": 1, "optimizer": "adamw", "lr_scheduler": "constant", "lr_warmup_steps": 0,
                "resolution": res, "trigger_words": ["zxq"], "seed": 42, "checkpoint_every": 1000000,
                "cache_latents": cache, "gradient_checkpointing": ckpt, "validation": {"enabled": False}}
        spec_path = work / f"spec-{res}-{cache}-{ckpt}.json"
        spec_path.write_text(json.dumps(spec))
        t0 = time.monotonic()
        proc = subprocess.run([py, "-m", "loraforge_trainer", "train", "--spec", str(spec_path), "--images", str(images),
                               "--out", str(out)], capture_output=True, text=True)
        wall = time.monotonic() - t0
        events = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
        done = next((e for e in events if e["event"] == "done"), None)
        if proc.returncode != 0 or done is None:
            last = events[-1] if events else proc.stderr[-2000:]
            print(f"| {cache} | {ckpt} | failed (exit {proc.returncode}): {last} | | | |")
            continue
        progress = [e for e in events if e["event"] == "progress"]
        steady = progress[-1].get("it_per_s") if progress else None
        whole = done["steps"] / done["train_seconds"] if done["train_seconds"] else float("nan")
        peak = done.get("peak_gpu_memory_bytes")
        peak_s = f"{peak / 2**30:.2f}" if peak is not None else "n/a (CPU)"
        steady_s = f"{steady:.2f}" if steady is not None else "n/a"
        print(f"| {cache} | {ckpt} | {steady_s} | {whole:.2f} | {peak_s} | {wall:.1f} |")
PY
