#!/usr/bin/env bash
# The cost of bookkeeping (issue 11, "Measure"): P1's control-plane overhead per LoRA
# (bench/lifecycle_overhead.sh) with bookkeeping off and on, alternated in one run.
#
#   bench/lifecycle_bookkeeping.sh [ROUNDS] [RUNS] [STEPS]   (defaults: 4 rounds, 3 runs, 10 steps)
#
# Each round runs bench/lifecycle_overhead.sh RUNS STEPS twice, each on a fresh server: "off"
# (LORAFORGE_METRICS_ENABLED=false, plus the words of LF_BOOKKEEPING_OFF) and "on" (the metrics
# recorder installed and its collector running, plus the words of LF_BOOKKEEPING_ON), in
# alternating order so drift hits both. The other bookkeeping features' settings (ledger,
# credits, client webhooks, …) go in those variables, e.g.
#   LF_BOOKKEEPING_ON="LORAFORGE_CREDITS=on" LF_BOOKKEEPING_OFF="LORAFORGE_CREDITS=off"
# Prints each round's median overhead per LoRA for both, then the medians over rounds and the
# difference (goal: under 50 ms more per LoRA).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-4}"
runs="${2:-3}"
steps="${3:-10}"
# A webhook receiver on loopback answering 204 to every delivery, for "on".
hook_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$hook_port" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
hook_pid=$!
trap 'kill $hook_pid 2>/dev/null' EXIT
# Off: no metrics recorder, no credits, no webhook, runs free (no ledger amounts). On: every
# piece of bookkeeping issue 11 adds: the recorder and its collector, credits reserved and
# settled, a priced local backend (ledger entries, the budget gate's sums), a client webhook per
# LoRA delivered to the receiver above.
off_env=(LORAFORGE_METRICS_ENABLED=false LORAFORGE_CREDITS=off LF_WEBHOOK_URL= ${LF_BOOKKEEPING_OFF:-})
on_env=(LORAFORGE_METRICS_ENABLED=true LORAFORGE_CREDITS=on LORAFORGE_LOCAL_PRICE_PER_HOUR=0.50
    LORAFORGE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=true LF_WEBHOOK_URL="http://127.0.0.1:$hook_port/hook"
    ${LF_BOOKKEEPING_ON:-})

median_of() { # the "median" row's overhead of a lifecycle_overhead.sh table, in ms
    awk -F'|' '$2 ~ /median/ { gsub(/ /, "", $6); printf "%.0f", $6 * 1000 }'
}
one() { # $1 = off|on
    local vars
    if [[ "$1" == off ]]; then vars=("${off_env[@]}"); else vars=("${on_env[@]}"); fi
    env "${vars[@]}" bash bench/lifecycle_overhead.sh "$runs" "$steps" 2>/dev/null | tee -a "$log" | median_of
}
log="$(mktemp)"
echo "| round | off: overhead median ms | on: overhead median ms |"
echo "| ---: | ---: | ---: |"
offs=(); ons=()
for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then a=$(one off); b=$(one on); else b=$(one on); a=$(one off); fi
    offs+=("$a"); ons+=("$b")
    echo "| $r | $a | $b |"
done
python3 - "${offs[*]}" "${ons[*]}" <<'PY'
import statistics, sys
off = [float(x) for x in sys.argv[1].split()]
on = [float(x) for x in sys.argv[2].split()]
print(f"| **median** | **{statistics.median(off):.0f}** | **{statistics.median(on):.0f}** |")
print(f"\nbookkeeping on costs {statistics.median(on) - statistics.median(off):+.0f} ms per LoRA (median of rounds; goal < 50)")
PY
echo "(full tables: $log)" >&2
