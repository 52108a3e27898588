#!/usr/bin/env bash
# Fallback with the primary provider hard down: `loraforge serve` with LORAFORGE_BACKENDS=runpod,local
# whose RunPod GraphQL URL is a loopback server answering 503 to every call (a dead provider; it
# logs each call's time and GraphQL operation), and the local backend as fallback (the trainer's
# venv as LORAFORGE_TRAINER_PYTHON, so the local backend is admitted). Creates LORAS LoRAs at once
# and measures, with the breaker settings at their defaults unless overridden:
#   (a) the time from the dead provider's first call to the first run started on `local`
#       (the run's `started_at` in the LoRA's attempts), goal < 2 min;
#   (b) the calls the dead provider received while its breaker was open (after `opened_at` in
#       GET /api/v1/admin/backends), over WATCH_SECS, against the probes the breaker let through
#       (its open → half_open transitions), goal: only the probes.
#
#   bench/fallback.sh                                  # defaults: 3 failures / 10 min, 30 min open
#   LORAFORGE_BREAKER_OPEN_SECS=20 WATCH_SECS=90 bench/fallback.sh   # probes within the window
#
# Debug build from CARGO_TARGET_DIR (latencies here are the engine's polls and timeouts, not CPU).
# Prints a markdown table; everything it started is stopped on exit and its temp dir removed.
set -euo pipefail
cd "$(dirname "$0")/.."
loras="${LORAS:-5}"
watch_secs="${WATCH_SECS:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"
# LORAFORGE_BIN: a loraforge binary to use instead of building one.
bin="${LORAFORGE_BIN:-}"
if [[ -z "$bin" ]]; then
    cargo build --locked -q -p loraforge >&2
    bin="$CARGO_TARGET_DIR/debug/loraforge"
fi
py=python3
trainer_python="${LORAFORGE_TRAINER_PYTHON:-$HOME/.cache/loraforge/venv-trainer/bin/python}"

work="$(mktemp -d)"
serve_pid=""
dead_pid=""
cleanup() {
    set +e
    [[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
    [[ -n "$dead_pid" ]] && kill "$dead_pid" 2>/dev/null && wait "$dead_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# The dead provider: every request answered 503, each logged as a JSON line.
"$py" - "$work/dead.port" "$work/dead.jsonl" <<'PY' 2>"$work/dead.err" &
import http.server, json, sys, time
port_file, log = sys.argv[1:]
class Dead(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            q = json.loads(body).get("query", "")
        except Exception:
            q = ""
        op = "deploy" if "podFindAndDeployOnDemand" in q or "deployCpuPod" in q else \
             "terminate" if "podTerminate" in q else "read"
        with open(log, "a") as f:
            f.write(json.dumps({"at": time.time(), "op": op, "q": q.split("(")[0].split("{")[0:2][-1].strip()[:40]}) + "\n")
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"errors":[{"message":"service unavailable"}]}')
    do_GET = do_POST
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dead)
open(port_file + ".tmp", "w").write(str(srv.server_address[1]))
import os; os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
PY
dead_pid=$!
for _ in $(seq 100); do [[ -s "$work/dead.port" ]] && break; sleep 0.1; done
dead_port=$(cat "$work/dead.port")
touch "$work/dead.jsonl"

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -u LORAFORGE_DATABASE_URL -u LORAFORGE_STORAGE_URL -u LORAFORGE_ENGINE_POLL_MS \
    LORAFORGE_DATA_DIR="$work/data" \
    LORAFORGE_BACKENDS=runpod,local LORAFORGE_RUNPOD_API_KEY=dead-key \
    LORAFORGE_RUNPOD_GRAPHQL_URL="http://127.0.0.1:$dead_port/graphql" \
    LORAFORGE_RUNPOD_IMAGE=loraforge/worker:bench LORAFORGE_RUNPOD_GPU_TYPES="NVIDIA RTX A6000" \
    LORAFORGE_ALLOW_LOOPBACK_CALLBACKS=true LORAFORGE_TRAINER_PYTHON="$trainer_python" \
    LORAFORGE_MONTHLY_LIMIT=100 LORAFORGE_MAX_CONCURRENT_JOBS=100 LORAFORGE_CREATES_PER_MINUTE=0 \
    LORAFORGE_IMAGE_MIN_SIDE=64 LORAFORGE_IMAGE_MIN_BYTES=1000 \
    LORAFORGE_LOG=info,tower_http=warn,sqlx=warn \
    "$bin" serve --bind "127.0.0.1:$port" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { echo "serve did not start:" >&2; tail -20 "$work/serve.log" >&2; exit 1; }
user=6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f
token=$("$bin" token --data-dir "$work/data" --user "$user" --ttl 2h)
admin=$("$bin" token --data-dir "$work/data" --user "$user" --ttl 2h --admin 2>/dev/null || true)

"$py" - "http://127.0.0.1:$port" "$token" "$admin" "$loras" "$watch_secs" "$work/dead.jsonl" <<'PY'
import json, os, random, struct, sys, time, urllib.error, urllib.request, uuid, zlib
from datetime import datetime
api, token, admin, loras, watch_secs, dead_log = sys.argv[1:]
loras, watch_secs = int(loras), int(watch_secs)

def call(method, path, body=None, headers=None, tok=None):
    req = urllib.request.Request(api + path, data=body, method=method,
                                 headers={"Authorization": "Bearer " + (tok or token), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: HTTP {e.code} {e.read()[:500]!r}")

def png(side, seed):
    rnd = random.Random(seed)
    raw = b"".join(b"\0" + bytes(rnd.getrandbits(8) for _ in range(side * 3)) for _ in range(side))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

def dead_calls():
    with open(dead_log) as f:
        return [json.loads(l) for l in f if l.endswith("\n")]

def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

boundary = uuid.uuid4().hex
parts = b""
for i in range(3):
    parts += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{i}.png\"\r\n"
              f"Content-Type: image/png\r\n\r\n").encode() + png(64, i + 1) + b"\r\n"
parts += f"--{boundary}--\r\n".encode()
dataset = call("POST", "/api/v1/datasets", parts,
               {"Content-Type": f"multipart/form-data; boundary={boundary}"})["dataset_id"]
ids = []
for i in range(loras):
    body = json.dumps({"name": f"fallback {i}", "dataset_id": dataset,
                       "params": {"trigger_words": ["zxq"]}}).encode()
    ids.append(call("POST", "/api/v1/lora-models", body, {"Content-Type": "application/json"})["lora_id"])

# (a) the first run started on the fallback.
def runpod_state():
    backends = call("GET", "/api/v1/admin/backends", tok=admin)
    return next(b for b in backends["backends"] if b["name"] == "runpod")

deadline = time.time() + 300
first_local = None
seen_open = None
while time.time() < deadline and (first_local is None or seen_open is None):
    if seen_open is None and runpod_state()["breaker_state"] == "open":
        seen_open = time.time()
    for i in ids:
        for a in call("GET", f"/api/v1/lora-models/{i}").get("attempts", []):
            if a["backend"] == "local":
                t = ts(a["started_at"])
                if first_local is None or t < first_local[0]:
                    first_local = (t, a.get("route_reason"))
    time.sleep(0.2)
calls = dead_calls()
if not calls:
    sys.exit("the dead provider received no call")
first_failure = min(c["at"] for c in calls)
if first_local is None:
    sys.exit("no run started on local within 300 s")

# (b) calls to the dead provider while its breaker is open.
time.sleep(watch_secs)
runpod = runpod_state()
history = list(reversed(runpod["transitions"]))
probes = sum(1 for t in history if t["from"] == "open" and t["to"] == "half_open")
calls = dead_calls()
if seen_open is None:
    sys.exit("the breaker never opened")
# Calls after the breaker was first seen open through the admin API (launches already in flight
# in the tick that opened it are before).
during = [c for c in calls if c["at"] > seen_open]
deploys_during = sum(1 for c in during if c["op"] == "deploy")
if os.environ.get("SHOW_CALLS"):
    for c in calls:
        print(f"call at +{c['at'] - first_failure:.2f} s: {c['op']} {c.get('q', '')}", file=sys.stderr)
print("| measure | value |")
print("| --- | --- |")
print(f"| LoRAs created at once | {loras} |")
print(f"| (a) first failure at the dead provider → first run started on local | {first_local[0] - first_failure:.2f} s |")
print(f"| route reason of that run | {first_local[1]} |")
print(f"| calls to the dead provider before its breaker was seen open | {len(calls) - len(during)} ({sum(1 for c in calls if c['op'] == 'deploy' and c['at'] <= seen_open)} launches) |")
print(f"| breaker seen open (admin API) after the first failure | {seen_open - first_failure:.2f} s |")
print(f"| (b) calls to the dead provider after that, over {watch_secs} s more | {len(during)} ({deploys_during} launches) |")
print(f"| probes let through (open → half_open) | {probes} |")
print(f"| breaker now | {runpod['breaker_state']}, next probe at {runpod['next_probe_at']} |")
PY
