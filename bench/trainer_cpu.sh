#!/usr/bin/env bash
# Trainer seconds per step on CPU for the tiny random SDXL-shaped model (the one the tests use).
#
#   bench/trainer_cpu.sh [STEPS] [RESOLUTION] [THREADS] [AT_ONCE]
#   (defaults: 40 steps, 64 px, 1 torch thread, 1 trainer; AT_ONCE > 1 starts that many
#   trainers together, as `serve` does with training_concurrency > 1, and reports their mean)
#
# Builds the trainer venv if needed (scripts/trainer-env.sh), writes the tiny pipeline and 4
# generated images to a temp folder, trains STEPS steps (batch 1, rank 8, cached latents,
# validation off) through the real command line, and prints one markdown table row: mean and
# median seconds per step (the first step, which warms up, excluded), the trainer's own
# train_seconds, and the whole process wall time (imports, model load, caching, saving included).
# On CPU only; it says nothing about GPU speed.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-40}"
res="${2:-64}"
threads="${3:-1}"
at_once="${4:-1}"

bash scripts/trainer-env.sh >&2
py="${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/venv-trainer/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 LORAFORGE_TORCH_THREADS="$threads" OMP_NUM_THREADS="$threads"

"$py" -m loraforge_trainer.testing tiny-sdxl "$work/model" >/dev/null 2>&1
"$py" -m loraforge_trainer.testing images "$work/images" >/dev/null 2>&1
cat >"$work/spec.json" <<JSON
{"job_id":"bench","base_model":"$work/model","type":"lora","rank":8,"alpha":32,"dropout":0.1,
 "target_modules":["to_k","to_q","to_v","to_out.0"],"steps":$steps,"learning_rate":1e-4,
 "batch_size":1,"optimizer":"adamw","lr_scheduler":"cosine_with_warmup","lr_warmup_steps":5,
 "resolution":$res,"trigger_words":["zxq"],"seed":42,"checkpoint_every":1000000,
 "validation":{"enabled":false}}
JSON

start=$(date +%s.%N)
pids=()
for i in $(seq 1 "$at_once"); do
    "$py" -m loraforge_trainer train --spec "$work/spec.json" --images "$work/images" --out "$work/out$i" \
        >"$work/events$i.jsonl" 2>"$work/stderr$i.log" &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { tail -20 "$work/stderr$((i + 1)).log" >&2; exit 1; }
done
end=$(date +%s.%N)

"$py" - "$work" "$at_once" "$start" "$end" "$steps" "$res" "$threads" <<'PY'
import json, statistics, sys
work, at_once, start, end, steps, res, threads = sys.argv[1:]
rests, medians, firsts, trains = [], [], [], []
for i in range(1, int(at_once) + 1):
    ev = [json.loads(l) for l in open(f"{work}/events{i}.jsonl")]
    done = ev[-1]
    assert done["event"] == "done", done
    # Per-step seconds from the trainer's own clock: train_seconds less the first (warm-up)
    # step, over the remaining steps; the median of the rolling it/s windows as a check.
    prog = [e for e in ev if e["event"] == "progress"]
    first = 1 / prog[0]["it_per_s"]
    rests.append((done["train_seconds"] - first) / (len(prog) - 1))
    medians.append(statistics.median([1 / p["it_per_s"] for p in prog[20:]] or [rests[-1]]))
    firsts.append(first)
    trains.append(done["train_seconds"])
mean = statistics.mean
load = open("/proc/loadavg").read().split()[1]  # 5-minute load: other work on the machine skews this
print("| steps | res | threads | trainers at once | s/step (excl. 1st) | median s/step (20-step windows) | first step s | train_seconds | process wall s | load (5 min) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
print(f"| {steps} | {res} | {threads} | {at_once} | {mean(rests):.4f} | {mean(medians):.4f} | {mean(firsts):.3f} | "
      f"{mean(trains):.2f} | {float(end) - float(start):.1f} | {load} |")
PY
