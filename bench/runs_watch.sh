#!/usr/bin/env bash
# The control plane watching many rented runs at once: `loraforge serve` with the RunPod pods
# backend against the standalone fake RunPod (`fake-runpod`), whose pods run no process and stay
# running. Creates RUNS LoRAs (one user, one dataset, limits lifted), waits until every one is
# `training` on its own pod, then, for WATCH_SECS:
#   - serve's CPU: utime+stime from /proc/<pid>/stat over the wall time, as % of one core
#     (also the busiest single second);
#   - serve's RSS: VmRSS sampled every second, the largest;
# and then cancels CANCELS LoRAs one at a time, each after the previous one's pod is gone, and
# measures the time from the cancel's HTTP 200 to the fake receiving `podTerminate` for that
# LoRA's pod (`loraforge-<lora id>-1`; the fake's --calls-log records each call's time).
#
#   RUNS=1000 WATCH_SECS=60 CANCELS=5 bench/runs_watch.sh
#   PROFILE=1 bench/runs_watch.sh      # also a second window under `perf record` (99 Hz), top symbols
#
# Release build, SQLite in a temp dir, LORAFORGE_ENGINE_POLL_MS at its default (1 s), the pods
# backend's listing every 15 s (its default). Goals (the issue): < 10 % of one core, < 300 MB.
# Prints markdown tables; everything it started is stopped on exit and its temp dir removed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-1000}"
watch_secs="${WATCH_SECS:-60}"
cancels="${CANCELS:-5}"
profile="${PROFILE:-0}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"
cargo build --release --locked -q -p loraforge -p loraforge-fakes --bins >&2
bin="$CARGO_TARGET_DIR/release/loraforge"
fake_bin="$CARGO_TARGET_DIR/release/fake-runpod"
py=python3

work="$(mktemp -d)"
serve_pid=""
fake_pid=""
cleanup() {
    # Not under set -e here: a non-zero exit of either process must not skip the rest.
    set +e
    [[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
    [[ -n "$fake_pid" ]] && kill "$fake_pid" 2>/dev/null && wait "$fake_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

key=bench-runpod-key
image=loraforge-bench/idle:1
gpu="NVIDIA RTX A6000"
"$fake_bin" --port 0 --api-key "$key" --gpu "$gpu=$((runs * 2))@0.79" --image "$image" \
    --calls-log "$work/calls.jsonl" >"$work/fake.out" 2>"$work/fake.err" &
fake_pid=$!
graphql=""
for _ in $(seq 100); do
    graphql="$(sed -n 's/^GRAPHQL_URL=//p' "$work/fake.out")"
    [[ -n "$graphql" ]] && break
    sleep 0.1
done
[[ -n "$graphql" ]] || { echo "fake-runpod did not start: $(cat "$work/fake.err")" >&2; exit 1; }

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
limit=$((runs + 100))
env -u LORAFORGE_DATABASE_URL -u LORAFORGE_STORAGE_URL -u LORAFORGE_ENGINE_POLL_MS \
    LORAFORGE_DATA_DIR="$work/data" \
    LORAFORGE_BACKENDS=runpod LORAFORGE_RUNPOD_API_KEY="$key" LORAFORGE_RUNPOD_GRAPHQL_URL="$graphql" \
    LORAFORGE_RUNPOD_IMAGE="$image" LORAFORGE_RUNPOD_GPU_TYPES="$gpu" LORAFORGE_RUNPOD_MAX_PODS="$limit" \
    LORAFORGE_ALLOW_LOOPBACK_CALLBACKS=true \
    LORAFORGE_MONTHLY_LIMIT="$limit" LORAFORGE_MAX_CONCURRENT_JOBS="$limit" LORAFORGE_CREATES_PER_MINUTE=0 \
    LORAFORGE_IMAGE_MIN_SIDE=64 LORAFORGE_IMAGE_MIN_BYTES=1000 \
    LORAFORGE_LOG_FORMAT=json LORAFORGE_LOG=info,tower_http=warn,sqlx=warn \
    "$bin" serve --bind "127.0.0.1:$port" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { echo "serve did not start:" >&2; tail -20 "$work/serve.log" >&2; exit 1; }
token=$("$bin" token --data-dir "$work/data" --user 6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f --ttl 2h)

"$py" - "http://127.0.0.1:$port" "$token" "$runs" "$watch_secs" "$cancels" "$serve_pid" "$fake_pid" \
    "$work/calls.jsonl" "$work/serve.log" "$profile" "$work" <<'PY'
import concurrent.futures as cf, json, os, random, statistics, struct, subprocess, sys, time
import urllib.error, urllib.request, uuid, zlib

(api, token, runs, watch_secs, cancels, serve_pid, fake_pid, calls_log, serve_log, profile,
 work) = sys.argv[1:]
runs, watch_secs, cancels, serve_pid, fake_pid = map(int, (runs, watch_secs, cancels, serve_pid, fake_pid))
tick = os.sysconf("SC_CLK_TCK")

def say(*a):
    print(*a, file=sys.stderr, flush=True)

def png(side, seed):
    rnd = random.Random(seed)
    raw = b"".join(b"\0" + bytes(rnd.getrandbits(8) for _ in range(side * 3)) for _ in range(side))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

def call(method, path, body=None, headers=None):
    req = urllib.request.Request(api + path, data=body, method=method,
                                 headers={"Authorization": "Bearer " + token, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: HTTP {e.code} {e.read()[:500]!r}")

def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def calls():
    out = []
    with open(calls_log) as f:
        for line in f:
            if line.endswith("\n"):
                out.append(json.loads(line))
    return out

# One dataset, RUNS LoRAs on it, created by 8 concurrent clients.
boundary = uuid.uuid4().hex
parts = b""
for i in range(3):
    parts += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{i}.png\"\r\n"
              f"Content-Type: image/png\r\n\r\n").encode() + png(64, i + 1) + b"\r\n"
parts += f"--{boundary}--\r\n".encode()
dataset = call("POST", "/api/v1/datasets", parts,
               {"Content-Type": f"multipart/form-data; boundary={boundary}"})["dataset_id"]

def create(i):
    body = json.dumps({"name": f"watch {i}", "dataset_id": dataset,
                       "params": {"trigger_words": ["zxq"]}}).encode()
    return call("POST", "/api/v1/lora-models", body, {"Content-Type": "application/json"})["lora_id"]

t0 = time.monotonic()
with cf.ThreadPoolExecutor(8) as pool:
    loras = list(pool.map(create, range(runs)))
t_created = time.monotonic() - t0
say(f"created {runs} LoRAs in {t_created:.1f} s")

# Until every LoRA has a pod in the fake and is `training`.
names = {f"loraforge-{lora}-1": lora for lora in loras}
deadline = time.monotonic() + 900
while True:
    deployed = {c["name"] for c in calls() if c["op"] == "deploy" and c.get("pod_id")}
    if len(deployed & names.keys()) == runs:
        break
    if time.monotonic() > deadline:
        sys.exit(f"only {len(deployed & names.keys())} of {runs} pods after 15 min")
    time.sleep(1)
t_pods = time.monotonic() - t0
def status(lora):
    return call("GET", f"/api/v1/lora-models/{lora}/status")["training_status"]
while True:
    with cf.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(status, loras))
    counts = {s: statuses.count(s) for s in set(statuses)}
    if counts.get("training") == runs:
        break
    if time.monotonic() > deadline:
        sys.exit(f"not all training: {counts}")
    time.sleep(1)
t_live = time.monotonic() - t0
deploys = [c for c in calls() if c["op"] == "deploy"]
say(f"{runs} pods after {t_pods:.1f} s, all training after {t_live:.1f} s "
    f"({len(deploys)} deploy calls, {sum(1 for c in deploys if c.get('error'))} refused)")
# Let the launch burst settle (one full listing period) before measuring.
time.sleep(16)

def window(secs):
    """CPU % of one core (whole window and busiest second), peak and last RSS of `pid`."""
    samples = []
    c0, w0, f0 = cpu_ticks(serve_pid), time.monotonic(), cpu_ticks(fake_pid)
    rss = [rss_kib(serve_pid)]
    prev_c, prev_w = c0, w0
    for k in range(secs):
        time.sleep(max(0.0, w0 + k + 1 - time.monotonic()))
        c, w = cpu_ticks(serve_pid), time.monotonic()
        samples.append(100.0 * (c - prev_c) / tick / (w - prev_w))
        prev_c, prev_w = c, w
        rss.append(rss_kib(serve_pid))
    wall = prev_w - w0
    return {"cpu": 100.0 * (prev_c - c0) / tick / wall, "cpu_max_1s": max(samples),
            "rss_peak_mib": max(rss) / 1024, "rss_end_mib": rss[-1] / 1024, "wall": wall,
            "fake_cpu": 100.0 * (cpu_ticks(fake_pid) - f0) / tick / wall, "samples": samples}

say(f"watching {runs} live runs for {watch_secs} s")
w = window(watch_secs)

# Cancels, one at a time.
seen_terminates = {c["name"] for c in calls() if c["op"] == "terminate"}
rows = []
for lora in random.Random(7).sample(loras, cancels):
    name = f"loraforge-{lora}-1"
    time.sleep(random.Random(lora).uniform(0.2, 3.0))  # not always at the same point of a tick
    sent = time.time()
    call("POST", f"/api/v1/lora-models/{lora}/cancel")
    ok = time.time()
    term = None
    limit = time.monotonic() + 120
    while term is None:
        term = next((c for c in calls() if c["op"] == "terminate" and c.get("name") == name), None)
        if term is None:
            if time.monotonic() > limit:
                sys.exit(f"no podTerminate for {name} within 120 s")
            time.sleep(0.05)
    rows.append((lora, (ok - sent) * 1000, (term["at_unix"] - ok) * 1000, (term["at_unix"] - sent) * 1000))
    st = status(lora)
    if st != "cancelled":
        sys.exit(f"LoRA {lora} is {st} after its cancel")

live_after = sum(1 for c in calls() if c["op"] == "deploy" and c.get("pod_id")) - \
    sum(1 for c in calls() if c["op"] == "terminate" and c.get("found"))
warnings = 0
with open(serve_log) as f:
    for line in f:
        try:
            if json.loads(line).get("level") in ("WARN", "ERROR"):
                warnings += 1
        except ValueError:
            pass

print(f"{runs} runs live at once (one pod each on the fake RunPod, pods idle); "
      f"creates: {t_created:.1f} s through the API (8 clients); all {runs} pods up {t_pods:.1f} s and all "
      f"`training` {t_live:.1f} s after the first create.")
print()
print("| measured over | serve CPU, % of one core | busiest 1 s | serve RSS peak MiB | RSS at end MiB | fake-runpod CPU % |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
print(f"| {w['wall']:.0f} s, {runs} runs live | {w['cpu']:.1f} | {w['cpu_max_1s']:.1f} | {w['rss_peak_mib']:.1f} | "
      f"{w['rss_end_mib']:.1f} | {w['fake_cpu']:.1f} |")
print()
print("CPU per second over the window (% of one core): " + " ".join(f"{s:.0f}" for s in w["samples"]))
print()
print("| cancel | LoRA | cancel request ms | cancel 200 → podTerminate ms | request sent → podTerminate ms |")
print("| ---: | --- | ---: | ---: | ---: |")
for i, (lora, req, lat, total) in enumerate(rows):
    print(f"| {i + 1} | {lora} | {req:.1f} | {lat:.1f} | {total:.1f} |")
print(f"| median | | {statistics.median(r[1] for r in rows):.1f} | {statistics.median(r[2] for r in rows):.1f} | "
      f"{statistics.median(r[3] for r in rows):.1f} |")
print()
print(f"pods still running at the end: {live_after}; warnings/errors in serve's log: {warnings}")

if profile == "1":
    data = os.path.join(work, "perf.data")
    say(f"profiling serve for {watch_secs} s")
    subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "99", "-g", "-p", str(serve_pid), "-o", data,
                    "--", "sleep", str(watch_secs)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol",
                          "-g", "none", "--percent-limit", "1"], capture_output=True, text=True).stdout
    print()
    print("perf (cpu-clock, 99 Hz, no children), symbols over 1 %:")
    print("```")
    print("\n".join(l for l in rep.splitlines() if l.strip() and not l.startswith("#"))[:6000])
    print("```")
PY
