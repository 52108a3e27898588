#!/usr/bin/env bash
# Library search with the library cache off (every request computes its page) against a bare
# /healthz, on SQLite and on Postgres, measured alternately in the same run. A build with the
# library index (on by default since issue 9's fourth step) answers from the public library it keeps
# in memory, in step with the database's change feed; LORAFORGE_LIBRARY_INDEX=false (exported
# before running this) makes it query the database on every request, as older builds do.
#
#   bench/library_search.sh [COUNT] [DURATION] [ROUNDS]    (defaults: 100000 LoRAs, 5s, 5 rounds)
#
# Seeds COUNT LoRAs (names and descriptions from a fixed 2,000-word vocabulary; a word matches a
# few hundred rows, a two-letter prefix several thousand), starts `loraforge serve` in release
# mode on a loopback port with LORAFORGE_LIBRARY_CACHE_MS=0, and loads it with wrk (2 threads,
# 64 connections). The search load (bench/library_search.lua) varies the search on every request
# over 60 words of the vocabulary and all their prefixes from two letters up, as a
# search-as-you-type box sends them ("ba", "bam", "bami", … "bamith"), sort=popular, 50 per page.
# Each round measures /healthz and the search load back to back; the table gives medians over
# the rounds, and the ratio column is the median of the per-round ratios, so drift of a shared
# machine hits both sides of each ratio alike.
#
# LF_BENCH_BASELINE=/path/to/an/older/loraforge measures that binary too, side by side: it seeds
# the database, a copy goes to the current build (which applies its newer migrations), both
# servers run at once, every round measures old and new, and the script first checks that both
# answer every search path with the same items and totals (an older build's total taken capped
# at LF_SEARCH_CAP, default 1,000 = SEARCH_TOTAL_CAP, when it has no total_exact).
# LF_BENCH_BASELINE_ENV=VAR=value sets one variable for the baseline server only (e.g.
# LORAFORGE_LIBRARY_INDEX=false, with the current build as the baseline: the database path).
# LF_BENCH_ENGINES="sqlite" (or "postgres") runs one engine only; LF_BENCH_BIN=/path/to/loraforge
# measures that binary as the current build instead of building one.
# Needs: wrk, sqlite3, psql, PostgreSQL on 127.0.0.1:5432 (trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-100000}"
duration="${2:-5s}"
rounds="${3:-5}"
engines="${LF_BENCH_ENGINES:-sqlite postgres}"
baseline="${LF_BENCH_BASELINE:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"
for tool in wrk sqlite3 psql python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install $tool)" >&2; exit 1; }
done

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

user=00000000-0000-7000-8000-000000000001
lua="$PWD/bench/library_search.lua"
export LF_SEARCH_PATHS="$work/paths.txt"
export LORAFORGE_LOG=warn LORAFORGE_JWT_SECRET="bench-secret-bench-secret-bench!" LORAFORGE_LIBRARY_CACHE_MS=0

to_ms() { # wrk prints 512.00us / 1.23ms / 1.01s
    awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'
}
# wrk --latency output → "req/s p50 p99" (latencies in ms). $1 = URL, $2 = token, $3 = lua script or "".
measure() {
    local args=(-t2 -c64 -d"$duration" --latency -H "Authorization: Bearer $2")
    [[ -n "$3" ]] && args+=(-s "$3")
    local out; out="$(wrk "${args[@]}" "$1")"
    local non2xx; non2xx="$(awk '/Non-2xx/ {print $NF}' <<<"$out")"
    [[ -z "$non2xx" ]] || { echo "errors during the run: $non2xx non-2xx responses" >&2; echo "$out" >&2; exit 1; }
    echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}

start_server() { # $1 = binary, $2 = data dir, $3 = database URL, $4 = port, $5 = VAR=value or ""; sets server_pid
    env ${5:+"$5"} LORAFORGE_DATABASE_URL="$3" "$1" --data-dir "$2" serve --bind "127.0.0.1:$4" 2>>"$2/serve.log" &
    server_pid=$!
    pids+=("$server_pid")
    # Generous: a newer build may be migrating a 100k-row library first.
    local up=""
    for _ in $(seq 1 1200); do curl -sf "http://127.0.0.1:$4/healthz" >/dev/null && { up=1; break; }; sleep 0.1; done
    [[ -n "$up" ]] || { echo "the server did not start; see $2/serve.log" >&2; cat "$2/serve.log" >&2; exit 1; }
    # A build with the library index loads it in the background as it starts: measure once it
    # has (a build without one has no "library_index" in /readyz).
    local t0=$SECONDS
    for _ in $(seq 1 1200); do
        curl -s "http://127.0.0.1:$4/readyz" | python3 -c 'import json,sys; i=json.load(sys.stdin).get("library_index"); sys.exit(0 if i is None or i["loaded"] else 1)' && break
        sleep 0.1
    done
    echo "server on :$4 ready in $((SECONDS - t0))s after /healthz, $(awk '/VmRSS/ {print $2/1024 " MB resident"}' "/proc/$server_pid/status"); $(curl -s "http://127.0.0.1:$4/readyz")" >&2
}

# 60 words of the seeded vocabulary (from LoRA names) and every prefix from two letters up.
write_paths() { # $1 = engine, $2 = database URL
    local names
    if [[ "$1" == sqlite ]]; then
        names="$(sqlite3 "${2#sqlite://}" "SELECT name FROM lora_models ORDER BY seq LIMIT 200")"
    else
        names="$(psql -At "$2" -c "SELECT name FROM lora_models ORDER BY created_at, id LIMIT 200")"
    fi
    printf '%s\n' "$names" >"$work/names.txt"
    python3 - "$LF_SEARCH_PATHS" "$work/names.txt" <<'PY'
import sys
words = []
for line in open(sys.argv[2]):
    for w in line.split():
        w = w.lower()
        if w.isalpha() and w not in words:
            words.append(w)
words = words[:60]
assert len(words) == 60, f"only {len(words)} words in the seeded names"
with open(sys.argv[1], "w") as f:
    for w in words:
        for k in range(2, len(w) + 1):
            f.write(f"/api/v1/lora-models?search={w[:k]}&sort=popular\n")
PY
}

results="$work/results.tsv"   # engine, build, round, rps, p50, p99, healthz rps of the round
run_engine() {
    local engine="$1"
    local dir="$work/$engine"; mkdir -p "$dir/new" "$dir/old"
    local new_url old_url
    if [[ "$engine" == sqlite ]]; then
        new_url="sqlite://$dir/new/loraforge.db"; old_url="sqlite://$dir/old/loraforge.db"
    else
        local db="lf_bench_$$"
        psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE ${db}_new" postgres; pgdbs+=("${db}_new")
        new_url="postgres://postgres@127.0.0.1:5432/${db}_new"; old_url="postgres://postgres@127.0.0.1:5432/${db}_old"
    fi
    local seeder="$bin" seed_url="$new_url" seed_dir="$dir/new"
    [[ -n "$baseline" ]] && { seeder="$baseline"; seed_url="$old_url"; seed_dir="$dir/old"; }
    if [[ -n "$baseline" && "$engine" == postgres ]]; then
        psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE ${db}_old" postgres; pgdbs+=("${db}_old")
    fi
    local t0=$SECONDS
    LORAFORGE_DATABASE_URL="$seed_url" "$seeder" --data-dir "$seed_dir" bench-seed --count "$count" >/dev/null
    echo "seeded $count LoRAs on $engine in $((SECONDS - t0))s" >&2
    if [[ -n "$baseline" ]]; then # the same rows for the current build
        if [[ "$engine" == sqlite ]]; then
            for f in loraforge.db loraforge.db-wal; do if [[ -f "$dir/old/$f" ]]; then cp "$dir/old/$f" "$dir/new/$f"; fi; done
        else
            psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE ${db}_new" -c "CREATE DATABASE ${db}_new TEMPLATE ${db}_old" postgres
        fi
    fi
    # VACUUM ANALYZE as after any bulk load, then CHECKPOINT: the seed's dirty pages are written
    # now, not by the checkpointer in the middle of a measurement.
    if [[ "$engine" == postgres ]]; then for u in "$new_url" ${baseline:+"$old_url"}; do psql -q "$u" -c "VACUUM ANALYZE" -c "CHECKPOINT"; done; fi
    write_paths "$engine" "$seed_url"
    echo "$(wc -l <"$LF_SEARCH_PATHS") search paths, e.g. $(head -3 "$LF_SEARCH_PATHS" | tr '\n' ' ')" >&2
    local token; token="$(LORAFORGE_DATABASE_URL="$seed_url" "$bin" --data-dir "$dir/new" token --user "$user" --ttl 2h)"

    start_server "$bin" "$dir/new" "$new_url" 18480
    local builds=(new)
    if [[ -n "$baseline" ]]; then
        start_server "$baseline" "$dir/old" "$old_url" 18481 "${LF_BENCH_BASELINE_ENV:-}"
        builds=(old new)
        # Same answers for every path: the same items; the new build's total is the old one
        # capped at LF_SEARCH_CAP (1,000, SEARCH_TOTAL_CAP) with total_exact saying whether it was.
        python3 - "$token" "$LF_SEARCH_PATHS" "${LF_SEARCH_CAP:-1000}" <<'PY' || exit 1
import json, sys, urllib.request
token, paths, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
def get(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    return json.load(urllib.request.urlopen(req))
diffs = 0
for path in open(paths).read().splitlines():
    old, new = get(18481, path), get(18480, path)
    if "total_exact" not in old:
        old["total"], old["total_exact"] = min(old["total"], cap), old["total"] <= cap
    if old != new:
        diffs += 1
        print(f"different answers for {path}", file=sys.stderr)
if diffs:
    sys.exit(f"{diffs} paths answered differently by old and new")
PY
        echo "old and new answer all $(wc -l <"$LF_SEARCH_PATHS") search paths with the same items and totals (capped)" >&2
    fi
    for r in $(seq 1 "$rounds"); do
        # Alternate the order inside a round so neither side always runs first.
        local order=(healthz "${builds[@]}")
        (( r % 2 == 0 )) && order=("${builds[@]}" healthz) && [[ ${#builds[@]} == 2 ]] && order=(new old healthz)
        local h="" line=()
        for what in "${order[@]}"; do
            case "$what" in
                healthz) read -r h_rps h_p50 h_p99 < <(measure "http://127.0.0.1:18480/healthz" "$token" ""); h="$h_rps" ;;
                new) line+=("new $(measure "http://127.0.0.1:18480/" "$token" "$lua")") ;;
                old) line+=("old $(measure "http://127.0.0.1:18481/" "$token" "$lua")") ;;
            esac
        done
        printf '%s\thealthz\t%s\t%s\t%s\t%s\t%s\n' "$engine" "$r" "$h_rps" "$h_p50" "$h_p99" "$h" >>"$results"
        for l in "${line[@]}"; do
            read -r b rps p50 p99 <<<"$l"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$engine" "$b" "$r" "$rps" "$p50" "$p99" "$h" >>"$results"
        done
        echo "round $r on $engine: $(grep -P "^$engine\t[^\t]+\t$r\t" "$results" | cut -f2,4-6 | tr '\t\n' ' |')" >&2
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    pids=()
}

for engine in $engines; do run_engine "$engine"; done

echo "raw rounds (engine, request, round, req/s, p50 ms, p99 ms, /healthz req/s of the round):" >&2
cat "$results" >&2
python3 - "$results" "$rounds" "$duration" <<'PY'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print(f"| engine | request | req/s | p50 ms | p99 ms | ratio to /healthz (median, min–max) |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
label = {"healthz": "/healthz", "old": "search, baseline build", "new": "search"}
for engine in dict.fromkeys(r[0] for r in rows):
    for what in ("healthz", "old", "new"):
        sel = [r for r in rows if r[0] == engine and r[1] == what]
        if not sel:
            continue
        med = lambda i: st.median(float(r[i]) for r in sel)
        ratios = [float(r[3]) / float(r[6]) for r in sel]
        ratio = "1.00" if what == "healthz" else f"{st.median(ratios):.4f} ({min(ratios):.4f}–{max(ratios):.4f})"
        print(f"| {engine} | {label[what]} | {med(3):.0f} | {med(4):.2f} | {med(5):.2f} | {ratio} |")
print(f"\nmedians over {sys.argv[2]} rounds of {sys.argv[3]} per measurement")
PY
