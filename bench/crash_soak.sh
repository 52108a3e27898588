#!/usr/bin/env bash
# Crash soak (issue 9, item 0): N LoRA lifecycles (default 100) on the tiny random SDXL-shaped
# model, release build, SQLite, local backend, several LoRAs in flight, while `serve` is killed
# with SIGKILL at random moments (client uploads, image downloads, training, result uploads,
# after-training) and restarted 0-3 s later on the same data dir.
#
#   bench/crash_soak.sh [N] [IN_FLIGHT] [KILL_MIN_S] [KILL_MAX_S]
#   (defaults: 100 lifecycles, 4 in flight, a kill every 4-15 s; STEPS=30, SEED=1,
#   SLOTS=2 training slots, DEADLINE_MIN=240, KEEP=1 keeps the work folder, LORAFORGE_BIN=path
#   uses that release binary instead of building one)
#
# Prints a JSON report: LoRAs completed / failed / lost / stuck, LoRAs trained again after a
# success (runs after a `trained` run in `training_runs`), processes left over (workers,
# trainers), files left over (job folders, stored checkpoints), kills and what was in flight at
# each. Exits non-zero if anything but `completed` is non-zero. Two CPU trainers run at once with
# one torch thread each (bench/concurrent_trainers.sh says why).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100}"
in_flight="${2:-4}"
kill_min="${3:-4}"
kill_max="${4:-15}"

bash scripts/trainer-env.sh >&2
py="${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/venv-trainer/bin/python"
if [[ -n "${LORAFORGE_BIN:-}" ]]; then
    bin="$LORAFORGE_BIN"   # a release binary built already
else
    cargo build --release -q -p loraforge >&2
    bin="${CARGO_TARGET_DIR:-target}/release/loraforge"
    bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
fi

work="$(mktemp -d)"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$work"' EXIT; else echo "work folder: $work" >&2; fi
PYTHONPATH="$PWD/trainer" HF_HUB_OFFLINE=1 "$py" -m loraforge_trainer.testing tiny-sdxl "$work/models/tiny-sdxl" >/dev/null

export HF_HUB_OFFLINE=1 LORAFORGE_TORCH_THREADS=1 OMP_NUM_THREADS=1
export LORAFORGE_TRAINER_PYTHON="$py" LORAFORGE_LOCAL_MODEL_ROOTS="$work/models"
export LORAFORGE_TRAINING_CONCURRENCY="${SLOTS:-2}" LORAFORGE_MAX_CONCURRENT_JOBS=2
export LORAFORGE_MIN_STEPS=1 LORAFORGE_MIN_RESOLUTION=64 LORAFORGE_IMAGE_MIN_SIDE=64
export LORAFORGE_IMAGE_MIN_BYTES=1000 LORAFORGE_LORA_MIN_BYTES=1000
export LORAFORGE_VALIDATION_AUTO_APPROVE=true LORAFORGE_CREATES_PER_MINUTE=0
export LORAFORGE_ENGINE_POLL_MS=500 LORAFORGE_WORKER_RETRY_DELAY_MS=500
export LORAFORGE_LOG="${LORAFORGE_LOG:-info,sqlx=warn,tower_http=warn}"

echo "machine: $(nproc --all) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
python3 bench/crash_soak.py --bin "$bin" --dir "$work" --model "$work/models/tiny-sdxl" \
    --n "$n" --in-flight "$in_flight" --kill-min "$kill_min" --kill-max "$kill_max" \
    --steps "${STEPS:-30}" --seed "${SEED:-1}" --deadline-min "${DEADLINE_MIN:-240}" && rc=0 || rc=$?
exit "$rc"
