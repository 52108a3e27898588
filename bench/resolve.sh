#!/usr/bin/env bash
# The generator's hand-off: POST /api/v1/generation/resolve with 10 characters under concurrent
# load, on SQLite and on Postgres (goal: p99 under 10 ms for 10 characters).
#
#   bench/resolve.sh [COUNT] [DURATION] [CONNECTIONS...]   (defaults: 10000 LoRAs, 5s, "1 4 16")
#
# Seeds COUNT LoRAs (`loraforge bench-seed`), gives every completed one a character id
# (`char-<n>`, 1,000 characters) and a model-file key, writes a 64 KiB model file for each
# completed LoRA of char-0 … char-9, starts `loraforge serve` (release, engine off), resolves once
# (that records the 10 files' sha256), checks every character answers `"mode": "lora"`, then loads
# it with wrk (CONNECTIONS connections = requests in flight). Every request is a new generation,
# so every request also records its 10 uses (one write transaction): the full path — 10
# character lookups, 10 file checks and signed URLs, one usage transaction.
#
# LF_BENCH_BASELINE=/path/to/old/loraforge measures that binary side by side: each binary gets its
# own database (same seed), both serve at once, and the wrk runs alternate old/new for
# LF_BENCH_ROUNDS rounds (default 3) at every connection count; medians and the p99 ratio are
# printed per engine and connection count.
# LF_BENCH_ENGINES="sqlite" (or "postgres") runs one engine only; LF_BENCH_BIN=/path/to/loraforge
# measures that binary instead of building one.
# Needs: wrk, sqlite3, psql, python3, curl, PostgreSQL on 127.0.0.1:5432 (trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-10000}"
duration="${2:-5s}"
shift $(( $# > 2 ? 2 : $# ))
levels="${*:-1 4 16}"
rounds="${LF_BENCH_ROUNDS:-3}"
engines="${LF_BENCH_ENGINES:-sqlite postgres}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"
for tool in wrk sqlite3 psql python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install $tool)" >&2; exit 1; }
done

bin="${LF_BENCH_BIN:-}"
if [[ -z "$bin" ]]; then
    cargo build --release -q -p loraforge
    bin="$CARGO_TARGET_DIR/release/loraforge"
fi
declare -A bins=([new]="$bin")
labels="new"
if [[ -n "${LF_BENCH_BASELINE:-}" ]]; then bins[old]="$LF_BENCH_BASELINE"; labels="old new"; fi
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
lua="$PWD/bench/resolve.lua"

to_ms() { # wrk prints 512.00us / 1.23ms / 1.01s
    awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'
}

start_engine() { # ENGINE LABEL PORT: a seeded database and a warmed-up server for binary LABEL
    local engine="$1" label="$2" port="$3" bin="${bins[$2]}"
    local dir="$work/$engine-$label"; mkdir -p "$dir"
    local url sql
    if [[ "$engine" == sqlite ]]; then
        url="sqlite://$dir/loraforge.db"
        sql() { sqlite3 "$dir/loraforge.db" "$1"; }
    else
        local db="lf_resolve_${label}_$$"
        psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres; pgdbs+=("$db")
        url="postgres://postgres@127.0.0.1:5432/$db"
        sql() { psql -qAt "$url" -c "$1"; }
    fi
    local t0=$SECONDS
    LORAFORGE_DATABASE_URL="$url" "$bin" --data-dir "$dir" bench-seed --count "$count" >/dev/null
    echo "seeded $count LoRAs on $engine ($label) in $((SECONDS - t0))s" >&2
    # Characters and file keys on the completed LoRAs (ids are UUIDv7: their order is stable).
    if [[ "$engine" == sqlite ]]; then
        sql "UPDATE lora_models SET character_id = 'char-' || (seq % 1000), file_size = 65536,
             storage_key = 'lora-models/bench/' || id || '/model.safetensors' WHERE training_status = 'completed'"
    else
        sql "UPDATE lora_models m SET character_id = 'char-' || (n.rn % 1000), file_size = 65536,
             storage_key = 'lora-models/bench/' || m.id || '/model.safetensors'
             FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM lora_models) n
             WHERE n.id = m.id AND m.training_status = 'completed'"
        sql "VACUUM ANALYZE" >/dev/null
    fi
    sql "SELECT storage_key FROM lora_models WHERE character_id IN
         ('char-0','char-1','char-2','char-3','char-4','char-5','char-6','char-7','char-8','char-9')" >"$dir/keys.txt"
    python3 - "$dir/blobs" "$dir/keys.txt" <<'PY'
import os, sys
root, keys = sys.argv[1], [k.strip() for k in open(sys.argv[2]) if k.strip()]
for i, k in enumerate(keys):
    p = os.path.join(root, k)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(i.to_bytes(4, "big") * 16384)
print(f"{len(keys)} model files written", file=sys.stderr)
PY
    token="$(LORAFORGE_DATABASE_URL="$url" "$bin" --data-dir "$dir" token --user "$user" --ttl 2h)"
    LORAFORGE_DATABASE_URL="$url" "$bin" --data-dir "$dir" serve --bind "127.0.0.1:$port" 2>>"$dir/serve.log" &
    pids+=("$!")
    for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    # One resolve first: records the 10 files' sha256 (hashed once), and checks the answers.
    local body='{"generation_id":"warm-up","characters":['
    for i in $(seq 0 9); do body+="{\"character_id\":\"char-$i\"}"; [[ $i -lt 9 ]] && body+=","; done
    body+=']}'
    local answer; answer="$(curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "$body" "http://127.0.0.1:$port/api/v1/generation/resolve")"
    local loras; loras="$(grep -o '"mode":"lora"' <<<"$answer" | wc -l)"
    [[ "$loras" == 10 ]] || { echo "warm-up answered $loras LoRAs of 10: $answer" >&2; exit 1; }
    echo "$token" >"$dir/token"
}

# One wrk run: prints "req/s p50 p90 p99" and fails on any bad answer.
load() { # PORT CONNS TOKEN RUN
    local out; out="$(LF_TOKEN="$3" LF_RUN="$4" wrk -t"$(( $2 < 2 ? $2 : 2 ))" -c"$2" -d"$duration" --latency -s "$lua" "http://127.0.0.1:$1")"
    local bad; bad="$(awk '/^bad_answers/ {print $2}' <<<"$out")"
    local non2xx; non2xx="$(awk '/Non-2xx/ {print $NF}' <<<"$out")"
    if [[ "$bad" != 0 || -n "$non2xx" ]]; then echo "$out" >&2; echo "bad answers: $bad, non-2xx: ${non2xx:-0}" >&2; exit 1; fi
    printf '%s %s %s %s\n' "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
        "$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")" "$(to_ms "$(awk '$1=="90%" {print $2}' <<<"$out")")" \
        "$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "resolve, 10 characters per request, $duration per run, $count LoRAs, $(nproc) cores, $rounds rounds, in flight: $levels"
results="$work/results"; : >"$results"
port=18490; run=0
for e in $engines; do
    declare -A ports=()
    for l in $labels; do start_engine "$e" "$l" "$port"; ports[$l]=$port; port=$((port + 1)); done
    for r in $(seq 1 "$rounds"); do
        for c in $levels; do
            for l in $labels; do
                run=$((run + 1))
                row="$(load "${ports[$l]}" "$c" "$(cat "$work/$e-$l/token")" "$run")"
                echo "$e $l $c $r $row" | tee -a "$results"
            done
        done
    done
done
echo
printf '%-8s %-4s %8s %10s %9s %9s %9s %10s\n' engine bin inflight req/s p50_ms p90_ms p99_ms p99_old/new
for e in $engines; do
    for c in $levels; do
        for l in $labels; do
            col() { awk -v e="$e" -v l="$l" -v c="$c" -v k="$1" '$1==e && $2==l && $3==c {print $k}' "$results" | median; }
            p99="$(col 8)"
            ratio=""
            if [[ "$l" == new && -n "${bins[old]:-}" ]]; then
                old99="$(awk -v e="$e" -v c="$c" '$1==e && $2=="old" && $3==c {print $8}' "$results" | median)"
                ratio="$(awk -v a="$old99" -v b="$p99" 'BEGIN { printf "%.1fx", a / b }')"
            fi
            printf '%-8s %-4s %8s %10s %9s %9s %9s %10s\n' "$e" "$l" "$c" "$(col 5)" "$(col 6)" "$(col 7)" "$p99" "$ratio"
        done
    done
done
