#!/usr/bin/env bash
# `/metrics` scrape time with a big database, against `/healthz` on the same server as the
# baseline, on SQLite and on Postgres (issue 11, "Measure"; goal: a scrape under 50 ms).
#
#   bench/metrics_scrape.sh [COUNT] [LIVE_RUNS] [ROUNDS] [PER_ROUND]
#       (defaults: 100000 LoRAs, 1000 live runs, 7 rounds of 50 requests per endpoint)
#
# Seeds COUNT LoRAs with `loraforge bench-seed --live-runs LIVE_RUNS` (every finished LoRA gets
# one ended run, LIVE_RUNS `training` ones an open run), starts `loraforge serve` (release, engine
# off so nothing touches the seeded runs; the metrics collector on, every 15 s), sends traffic
# over 20 routes so the HTTP histograms have series to render, waits for a collection, then
# alternates rounds: PER_ROUND sequential GETs of /healthz, then of /metrics, on one keep-alive
# connection, timed client-side (request to last body byte). Prints per-round medians, the median
# over rounds, the scrape's size and series count, and how long the collector's database read took
# (`loraforge_metrics_collect_seconds`, read from the scrape).
#
# LF_BENCH_ENGINES="sqlite" (or "postgres") runs one engine only; LF_BENCH_BIN=/path/to/loraforge
# measures that binary instead of building one.
# Needs: python3, curl, psql and PostgreSQL on 127.0.0.1:5432 (trust auth) for the Postgres run.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-100000}"
live="${2:-1000}"
rounds="${3:-7}"
per_round="${4:-50}"
engines="${LF_BENCH_ENGINES:-sqlite postgres}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"

bin="${LF_BENCH_BIN:-}"
if [[ -z "$bin" ]]; then
    cargo build --release -q -p loraforge
    bin="$CARGO_TARGET_DIR/release/loraforge"
fi
work="$(mktemp -d)"
pids=()
pgdbs=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for d in "${pgdbs[@]}"; do psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" postgres || true; done
    rm -rf "$work"
}
trap cleanup EXIT
export LORAFORGE_LOG=warn LORAFORGE_JWT_SECRET="bench-secret-bench-secret-bench!" LORAFORGE_ENGINE_ENABLED=false
user=00000000-0000-7000-8000-000000000001

run_engine() {
    local engine="$1" port="$2"
    local dir="$work/$engine"; mkdir -p "$dir"
    local url
    if [[ "$engine" == sqlite ]]; then
        url="sqlite://$dir/loraforge.db"
    else
        local db="lf_metrics_$$"
        psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres; pgdbs+=("$db")
        url="postgres://postgres@127.0.0.1:5432/$db"
    fi
    local t0=$SECONDS
    LORAFORGE_DATABASE_URL="$url" "$bin" --data-dir "$dir" bench-seed --count "$count" --live-runs "$live" >/dev/null
    echo "seeded $count LoRAs and their runs on $engine in $((SECONDS - t0))s" >&2
    [[ "$engine" == postgres ]] && psql -q "$url" -c "VACUUM ANALYZE"
    local token; token="$(LORAFORGE_DATABASE_URL="$url" "$bin" --data-dir "$dir" token --user "$user" --ttl 2h)"
    LORAFORGE_DATABASE_URL="$url" "$bin" --data-dir "$dir" serve --bind "127.0.0.1:$port" 2>>"$dir/serve.log" &
    pids+=("$!")
    for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    python3 - "$engine" "http://127.0.0.1:$port" "$token" "$rounds" "$per_round" "$count" "$live" <<'PY'
import http.client, statistics, sys, time, urllib.parse, uuid
engine, base, token, rounds, per_round, count, live = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
auth = {"Authorization": "Bearer " + token}

def get(path, headers=None):
    t = time.perf_counter()
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    return r.status, body, (time.perf_counter() - t) * 1000

# Traffic over many routes (404s and 200s), so the scrape renders realistic HTTP series.
paths = ["/readyz", "/api/v1/me", "/api/v1/me/limits", "/api/v1/lora-models", "/api/v1/lora-models?sort=popular",
         "/api/v1/admin/backends", "/nope", "/openapi.json"]
for p in paths:
    for _ in range(5):
        get(p, auth)
for _ in range(20):
    lid = uuid.uuid4()
    for p in (f"/api/v1/lora-models/{lid}", f"/api/v1/lora-models/{lid}/status", f"/api/v1/datasets/{lid}",
              f"/api/v1/worker/jobs/{lid}"):
        get(p, auth)
# The collector runs at start and every 15 s; wait for a reading of the seeded database.
deadline = time.time() + 60
while True:
    status, body, _ = get("/metrics")
    text = body.decode()
    line = next((l for l in text.splitlines() if l.startswith("loraforge_metrics_collect_seconds ")), None)
    if line or time.time() > deadline:
        break
    time.sleep(0.5)
assert status == 200 and line, "no database metrics after 60 s"
collect_ms = next(float(l.split()[-1]) * 1000 for l in text.splitlines() if l.startswith("loraforge_metrics_collect_seconds"))
series = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
live_runs = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("loraforge_live_runs"))
queued = next(l.split()[-1] for l in text.splitlines() if l.startswith('loraforge_jobs{status="queued"}'))
print(f"\n### {engine}: {count} LoRAs, {int(live_runs)} live runs (asked {live}), {queued} queued; "
      f"scrape {len(body)} bytes, {series} series; collector read {collect_ms:.1f} ms\n")
print("| round | /healthz median ms | /metrics median ms | /metrics p90 ms |")
print("|---|---|---|---|")
hz, mx = [], []
for r in range(rounds):
    h = [get("/healthz")[2] for _ in range(per_round)]
    m = []
    for _ in range(per_round):
        s, _, ms = get("/metrics")
        assert s == 200
        m.append(ms)
    hz.append(statistics.median(h)); mx.append(statistics.median(m))
    print(f"| {r + 1} | {statistics.median(h):.2f} | {statistics.median(m):.2f} | {statistics.quantiles(m, n=10)[-1]:.2f} |")
print(f"| **median** | **{statistics.median(hz):.2f}** | **{statistics.median(mx):.2f}** | |")
PY
}

port=18490
for engine in $engines; do
    run_engine "$engine" "$port"
    port=$((port + 1))
done
