#!/usr/bin/env bash
# Two CPU trainers at once (what `serve` runs with training_concurrency = 2), side by side in
# one run: each with torch's default thread count on this machine (the baseline; every trainer's
# OpenMP pool takes all the cores) and each with cores ÷ 2 threads (what `serve` now passes in
# LORAFORGE_TORCH_THREADS). Tiny model, validation off; see bench/trainer_cpu.sh.
#
#   bench/concurrent_trainers.sh [STEPS] [RESOLUTION]     (defaults: 40 steps, 64 px)
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-40}"
res="${2:-64}"
cores="$(nproc)"
split=$(( cores / 2 > 0 ? cores / 2 : 1 ))
echo "machine: $cores cores; 2 trainers at once"
echo "baseline: $cores threads each (torch's default)"
bench/trainer_cpu.sh "$steps" "$res" "$cores" 2
echo "shipped: $split thread(s) each (cores ÷ trainers)"
bench/trainer_cpu.sh "$steps" "$res" "$split" 2 | tail -n1
