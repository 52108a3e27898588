#!/usr/bin/env bash
# Control-plane overhead of one LoRA's lifecycle: wall time from the create request to the
# `completed` status, minus the trainer process's own wall time (interpreter start to exit, as
# the worker measures it and reports in its result). What is left is everything loraforge adds:
# the engine admitting and dispatching the job, starting the worker, the job fetch, image
# downloads, uploads, the file check, validation bookkeeping, status polling.
#
#   bench/lifecycle_overhead.sh [RUNS] [STEPS]      (defaults: 5 runs, 10 steps, 64 px)
#
# Release build of `loraforge serve` with SQLite and local storage in a temp dir, the tiny
# random SDXL-shaped model the tests use, CPU. Prints a markdown table, one row per run, then
# the mean and median. Goal (issue 4): overhead under 1.5 s.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
steps="${2:-10}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"
bash scripts/trainer-env.sh >&2
cargo build --release --locked -p loraforge >&2
bin="$CARGO_TARGET_DIR/release/loraforge"
py="${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/venv-trainer/bin/python"

work="$(mktemp -d)"
serve_pid=""
cleanup() {
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
export HF_HUB_OFFLINE=1
"$py" -m loraforge_trainer.testing tiny-sdxl "$work/models/tiny" >/dev/null 2>&1

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -u LORAFORGE_DATABASE_URL -u LORAFORGE_STORAGE_URL \
    LORAFORGE_DATA_DIR="$work/data" LORAFORGE_TRAINER_PYTHON="$py" \
    LORAFORGE_LOCAL_MODEL_ROOTS="$work/models" LORAFORGE_MIN_STEPS=1 LORAFORGE_MIN_RESOLUTION=64 \
    LORAFORGE_IMAGE_MIN_SIDE=64 LORAFORGE_IMAGE_MIN_BYTES=1000 LORAFORGE_LORA_MIN_BYTES=1000 \
    LORAFORGE_VALIDATION_AUTO_APPROVE=true LORAFORGE_CREATES_PER_MINUTE=0 LORAFORGE_MONTHLY_LIMIT=1000 \
    LORAFORGE_LOG_FORMAT=json LORAFORGE_LOG=info,tower_http=warn,sqlx=warn \
    "$bin" serve --bind "127.0.0.1:$port" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
token=$("$bin" token --data-dir "$work/data" --user 6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f --ttl 1h)
# With LORAFORGE_CREDITS=on the user needs credits: an admin grants $1,000 first.
if [ "${LORAFORGE_CREDITS:-off}" = on ]; then
    admin=$("$bin" token --data-dir "$work/data" --user 0d0a0b0c-1d1e-4f10-8a11-121314151617 --admin --ttl 1h)
    curl -sf -X POST -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
        "http://127.0.0.1:$port/api/v1/admin/users/6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f/credits" \
        -d '{"amount_usd":"1000","reason":"benchmark"}' >/dev/null
fi

"$py" - "http://127.0.0.1:$port" "$token" "$work/models/tiny" "$runs" "$steps" "$work/serve.log" <<'PY'
import io, json, os, random, statistics, sys, time, urllib.request, uuid, zlib, struct

api, token, model, runs, steps, log = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]

def png(side, seed):
    rnd = random.Random(seed)
    raw = b"".join(b"\0" + bytes(rnd.getrandbits(8) for _ in range(side * 3)) for _ in range(side))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

def call(method, path, body=None, headers=None):
    req = urllib.request.Request(api + path, data=body, method=method,
                                 headers={"Authorization": "Bearer " + token, **(headers or {})})
    with urllib.request.urlopen(req) as r:
        return json.load(r)

def upload():
    boundary = uuid.uuid4().hex
    parts = b""
    for i in range(3):
        parts += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{i}.png\"\r\n"
                  f"Content-Type: image/png\r\n\r\n").encode() + png(96, i + 1) + b"\r\n"
    parts += f"--{boundary}--\r\n".encode()
    return call("POST", "/api/v1/datasets", parts, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

rows = []
for run in range(runs):
    ds = upload()["dataset_id"]
    body = json.dumps({"name": f"bench {run} {uuid.uuid4().hex[:6]}", "dataset_id": ds,
                       "params": {"base_model": model, "steps": steps, "resolution": 64, "rank": 4,
                                  "lr_warmup_steps": 0, "trigger_words": ["zxq"]},
                       # LF_WEBHOOK_URL: every event of the LoRA is POSTed there (client webhooks).
                       **({"webhook": os.environ["LF_WEBHOOK_URL"]} if os.environ.get("LF_WEBHOOK_URL") else {})}).encode()
    t0 = time.monotonic()
    lora = call("POST", "/api/v1/lora-models", body, {"Content-Type": "application/json"})["lora_id"]
    while True:
        s = call("GET", f"/api/v1/lora-models/{lora}/status")
        if s["training_status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.02)
    wall = time.monotonic() - t0
    if s["training_status"] != "completed":
        sys.exit(f"run {run}: {s}")
    result = None
    for line in open(log):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        f = rec.get("fields", {})
        if f.get("message") == "training result" and f.get("lora") == lora:
            result = f
    trainer = float(result["trainer_seconds"].strip("Some()"))
    train = float(result["train_seconds"].strip("Some()"))
    rows.append((wall, trainer, train, wall - trainer))

print("| run | create → completed s | trainer process s | of which training s | control-plane overhead s |")
print("| ---: | ---: | ---: | ---: | ---: |")
for i, (wall, trainer, train, over) in enumerate(rows):
    print(f"| {i + 1} | {wall:.2f} | {trainer:.2f} | {train:.2f} | {over:.2f} |")
over = [r[3] for r in rows]
print(f"| mean | {statistics.mean(r[0] for r in rows):.2f} | {statistics.mean(r[1] for r in rows):.2f} | "
      f"{statistics.mean(r[2] for r in rows):.2f} | {statistics.mean(over):.2f} |")
print(f"| median | | | | {statistics.median(over):.2f} |")
PY
