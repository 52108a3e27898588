#!/usr/bin/env bash
# File checks, loraforge vs the Python route the PRD describes, side by side in one run.
#
#   bench/file_checks.sh [IMAGES] [LORA_MB]      (defaults: 200 images, a 200 MB LoRA)
#
# (a) Dataset check with full decode: IMAGES generated images (a quarter each of 1024² JPEG,
#     1024² PNG, 2048² JPEG, 2048² PNG) checked by `loraforge check-dataset` on one core
#     (RAYON_NUM_THREADS=1) and on all cores, vs Pillow's `Image.open(f).verify()` then
#     `Image.open(f).load()` per image.
# (b) LoRA inspection with the NaN/Inf scan of every value: a kohya-style F16 LoRA of LORA_MB
#     megabytes checked by `loraforge inspect` (memory-mapped) on one core and all cores, vs
#     `safetensors.safe_open(framework="pt")` + `torch.isnan(t).any()` per tensor.
# Every measurement runs once to warm the page cache, then 3 times; the median is reported.
# Prints one markdown table. Python: the trainer venv (scripts/trainer-env.sh) when it has
# torch, safetensors and Pillow, else a pinned venv from bench/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
images="${1:-200}"
lora_mb="${2:-200}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"
cache="${LORAFORGE_CACHE:-$HOME/.cache/loraforge}"

py="$cache/venv-trainer/bin/python"
if ! "$py" -c 'import torch, safetensors, PIL, numpy' 2>/dev/null; then
    py="$cache/venv-bench/bin/python"
    if ! "$py" -c 'import torch, safetensors, PIL, numpy' 2>/dev/null; then
        python3 -m venv "$cache/venv-bench"
        "$cache/venv-bench/bin/pip" install -q -r bench/requirements.txt
    fi
fi

cargo build --release -q -p loraforge
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$py" bench/file_checks.py --bin "$CARGO_TARGET_DIR/release/loraforge" --work "$work" --images "$images" --lora-mb "$lora_mb"
