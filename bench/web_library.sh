#!/usr/bin/env bash
# The web UI's library page at 100,000 LoRAs, in headless Chromium on loopback.
#
#   bench/web_library.sh [COUNT] [RUNS]     (defaults: 100000 LoRAs, 7 runs)
#
# Seeds COUNT LoRAs (`loraforge bench-seed`, SQLite), starts `loraforge serve` (release build)
# on a loopback port, and drives Chromium over WebDriver (chromedriver, as the browser tests do):
# - first render: a fresh page load of `/#/library` until the app's `lf-first-rows` mark (the
#   first page of rows painted), from navigation start; the library cache is on (the default),
#   as served;
# - search: typing a word into the search box, from the last keystroke's `input` event until
#   the results are painted (the page's debounce included; window.__lf.searchMs), for several
#   words of the seed vocabulary (cache off for these requests' first sight: each word is new).
# Prints each run and the medians. LF_BENCH_BIN=/path/to/loraforge skips the build.
# Needs: chromium, chromium-driver, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-100000}"
runs="${2:-7}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loraforge/target}"
bin="${LF_BENCH_BIN:-}"
if [[ -z "$bin" ]]; then
    cargo build --release -q -p loraforge
    bin="$CARGO_TARGET_DIR/release/loraforge"
fi
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
for v in $(env | grep -o '^LORAFORGE_[A-Z_]*'); do unset "$v"; done
export LORAFORGE_LOG=warn

"$bin" bench-seed --data-dir "$work/data" --count "$count" >/dev/null
LORAFORGE_LOG=info "$bin" serve --data-dir "$work/data" --bind 127.0.0.1:0 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 200); do
    grep -q "loraforge listening" "$work/serve.log" && break
    sleep 0.1
done
addr=$(sed 's/\x1b\[[0-9;]*m//g' "$work/serve.log" | grep -o 'addr=[0-9.:]*' | head -1 | cut -d= -f2)
token=$("$bin" token --data-dir "$work/data" --user 00000000-0000-7000-8000-000000000001)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
chromedriver --port="$port" --allowed-ips=127.0.0.1 >"$work/driver.log" 2>&1 &
pids+=($!)
sleep 1

URL="http://$addr" TOKEN="$token" DRIVER="http://127.0.0.1:$port" RUNS="$runs" python3 - <<'PY'
import json, os, statistics, time, urllib.request

driver, url, token, runs = os.environ["DRIVER"], os.environ["URL"], os.environ["TOKEN"], int(os.environ["RUNS"])

def call(method, path, body=None):
    req = urllib.request.Request(driver + path, method=method,
        data=None if body is None else json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["value"]

chromium = "/usr/lib/chromium/chromium" if os.path.exists("/usr/lib/chromium/chromium") else "/usr/bin/chromium"
s = call("POST", "/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": chromium,
    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,700", "--disable-dev-shm-usage"]}}}})
sid = "/session/" + s["sessionId"]
js = lambda script, *args: call("POST", sid + "/execute/sync", {"script": script, "args": list(args)})

def wait(script, limit=30):
    t = time.time()
    while time.time() - t < limit:
        v = js(script)
        if v:
            return v
        time.sleep(0.01)
    raise SystemExit("timed out waiting for " + script)

call("POST", sid + "/url", {"url": url + "/"})
js("localStorage.setItem('loraforge.token', arguments[0]);", token)
first = []
for i in range(runs):
    call("POST", sid + "/url", {"url": url + "/?r=%d#/library" % i})
    ms = wait("const m = performance.getEntriesByName('lf-first-rows'); return m.length && m[0].startTime;")
    first.append(ms)
    print(f"first render run {i + 1}: {ms:.1f} ms")

# Words of the seeded vocabulary, as the library's own names use them.
req = urllib.request.Request(url + "/api/v1/lora-models?limit=100&sort=name", headers={"Authorization": "Bearer " + token})
names = [l["name"] for l in json.load(urllib.request.urlopen(req))["items"]]
words = list(dict.fromkeys(w.lower() for n in names for w in n.split() if len(w) > 3))[:max(runs, 1)]
search = []
for i in range(runs):
    word = words[i % len(words)]
    el = call("POST", sid + "/element", {"using": "css selector", "value": "#search"})
    eid = list(el.values())[0]
    call("POST", sid + f"/element/{eid}/clear", {})
    wait("return window.__lf && window.__lf.searchMs !== undefined;")
    before = js("return window.__lf.searchMs.length;")
    # Types the word one key at a time, as a person does; the measure starts at the last key.
    call("POST", sid + f"/element/{eid}/value", {"text": word})
    wait(f"return window.__lf.searchMs.length > {before} && document.querySelector('#loras').dataset.searched === {json.dumps(word)};")
    ms = js("return window.__lf.searchMs.at(-1);")
    search.append(ms)
    rows = js("return document.querySelectorAll('#loras li.lora-row').length;")
    print(f"search run {i + 1} ({word!r}, {rows} rows): {ms:.1f} ms")

print(f"median first render: {statistics.median(first):.1f} ms (goal < 300 ms)")
print(f"median search (last keystroke -> results painted, 60 ms debounce included): {statistics.median(search):.1f} ms (goal < 100 ms)")
call("DELETE", sid)
PY
