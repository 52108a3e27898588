#!/usr/bin/env bash
# Hostile uploads against a release `loraforge serve` (issue 9 item 2): for each kind — one
# request of ~93,000 tiny parts, one 200 MB part, a declared Content-Length of 250 MB, 40 MP
# PNG bombs at 16 and at 8 bits per channel — CONCURRENCY requests at once while one client
# keeps uploading honest 3-image datasets. Samples the server's RSS (/proc/<pid>/status) and
# prints, per kind, the answers, the peak RSS and how many honest uploads succeeded meanwhile.
# Goal: peak RSS under 300 MB with 8 at once, every honest upload succeeding.
#
#   bench/hostile_uploads.sh [CONCURRENCY] [KINDS]      (defaults: 8, every kind)
#   LORAFORGE_BIN=/path/to/loraforge bench/hostile_uploads.sh     (another build, e.g. main's)
#
# SQLite and local storage in a temp dir, the job engine off (no trainer needed).
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency="${1:-8}"
kinds="${2:-}"

if [ -z "${LORAFORGE_BIN:-}" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"
    cargo build --release --locked -p loraforge >&2
    LORAFORGE_BIN="$CARGO_TARGET_DIR/release/loraforge"
fi
bin="$LORAFORGE_BIN"

work="$(mktemp -d)"
serve_pid=""
cleanup() {
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -u LORAFORGE_DATABASE_URL -u LORAFORGE_STORAGE_URL \
    LORAFORGE_DATA_DIR="$work/data" LORAFORGE_ENGINE_ENABLED=false \
    LORAFORGE_LOG=warn "$bin" serve --bind "127.0.0.1:$port" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
token=$("$bin" token --data-dir "$work/data" --user 6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f --ttl 1h)

echo "binary: $bin" >&2
python3 bench/hostile_uploads.py "http://127.0.0.1:$port" "$token" "$serve_pid" "$concurrency" "$kinds"
