#!/usr/bin/env bash
# Library search vs a bare /healthz, on SQLite and on Postgres, in one run.
#
#   bench/library_search.sh [COUNT] [DURATION]      (defaults: 100000 LoRAs, 10s per measurement)
#
# Seeds COUNT LoRAs (names and descriptions from a fixed vocabulary, so one word matches a few
# hundred rows), starts `loraforge serve` in release mode on a loopback port, and loads it with
# wrk (2 threads, 16 connections): GET /healthz, then GET /api/v1/lora-models?search=<word>&sort=popular
# with the library cache off (every request runs the query) and on (the default, 1 s TTL).
# Prints one markdown table.
# Needs: wrk (apt-get install wrk), PostgreSQL on 127.0.0.1:5432 (trust auth) for the second half.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-100000}"
duration="${2:-10s}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }

cargo build --release -q -p loraforge
bin="$CARGO_TARGET_DIR/release/loraforge"
work="$(mktemp -d)"
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=18480
user=00000000-0000-7000-8000-000000000001
word=""  # printed by bench-seed: a word of the seeded vocabulary

# wrk --latency output → "req/s p50 p99" (latencies in ms).
measure() {
    local url="$1" token="$2"
    local out; out="$(wrk -t2 -c16 -d"$duration" --latency -H "Authorization: Bearer $token" "$url")"
    local rps; rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    local p50; p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
    local p99; p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
    local non2xx; non2xx="$(awk '/Non-2xx/ {print $NF}' <<<"$out")"
    [[ -z "$non2xx" ]] || { echo "errors during the run: $non2xx non-2xx responses" >&2; echo "$out" >&2; exit 1; }
    echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { # wrk prints 512.00us / 1.23ms / 1.01s
    awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'
}

start_server() { # $1 = data dir, $2 = library cache ms
    LORAFORGE_LIBRARY_CACHE_MS="$2" "$bin" --data-dir "$1" serve --bind "127.0.0.1:$port" 2>>"$1/serve.log" &
    server_pid=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return 0; sleep 0.1; done
    echo "the server did not start; see $1/serve.log" >&2; exit 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

run_engine() {
    local engine="$1" db_url="$2"
    local dir="$work/$engine"; mkdir -p "$dir"
    export LORAFORGE_DATABASE_URL="$db_url" LORAFORGE_LOG=warn LORAFORGE_JWT_SECRET="bench-secret-bench-secret-bench!"
    local t0=$SECONDS
    word="$("$bin" --data-dir "$dir" bench-seed --count "$count")"
    echo "seeded $count LoRAs on $engine in $((SECONDS - t0))s; searching for \"$word\"" >&2
    local token; token="$("$bin" --data-dir "$dir" token --user "$user" --ttl 1h)"
    local search="http://127.0.0.1:$port/api/v1/lora-models?search=$word&sort=popular"

    # The query path: library cache off, every request reaches the database.
    start_server "$dir" 0
    local hits; hits="$(curl -sf -H "Authorization: Bearer $token" "$search&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')"
    read -r h_rps h_p50 h_p99 < <(measure "http://127.0.0.1:$port/healthz" "$token")
    read -r s_rps s_p50 s_p99 < <(measure "$search" "$token")
    stop_server
    # The default: listings served from the 1 s library cache.
    start_server "$dir" 1000
    read -r c_rps c_p50 c_p99 < <(measure "$search" "$token")
    stop_server
    ratio() { awk -v a="$1" -v b="$h_rps" 'BEGIN { printf "%.2f", a/b }'; }
    printf '| %s | /healthz | %s | %s | %s | 1.00 |\n' "$engine" "$h_rps" "$h_p50" "$h_p99"
    printf '| %s | search (%s matches), sort=popular, cache off | %s | %s | %s | %s |\n' "$engine" "$hits" "$s_rps" "$s_p50" "$s_p99" "$(ratio "$s_rps")"
    printf '| %s | search (%s matches), sort=popular, cache on (default) | %s | %s | %s | %s |\n' "$engine" "$hits" "$c_rps" "$c_p50" "$c_p99" "$(ratio "$c_rps")"
    unset LORAFORGE_DATABASE_URL
}

echo "| engine | request | req/s | p50 ms | p99 ms | search/healthz |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
run_engine sqlite "sqlite://$work/sqlite/loraforge.db"
pgdb="lf_bench_$$"
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $pgdb" postgres
run_engine postgres "postgres://postgres@127.0.0.1:5432/$pgdb"
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $pgdb WITH (FORCE)" postgres
