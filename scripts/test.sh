#!/usr/bin/env bash
# The whole test suite, from a fresh machine: `./scripts/test.sh`. `.ci/run` runs exactly this.
#
# What it needs and sets up:
# - Rust (cargo) — the one thing it cannot install; get it from https://rustup.rs.
# - PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres (or LORAFORGE_TEST_POSTGRES_URL):
#   started here when a local cluster exists but is down; installed with apt-get when missing and
#   running as root on Debian/Ubuntu; otherwise it stops and says what to do.
# - Python 3 with venv: a cached venv with moto_server (the S3 fake) and schemathesis (the API
#   fuzzer that `cargo test` runs against a live server: crates/server/tests/api/schemathesis.rs,
#   bounded and seeded), via scripts/test-env.sh, and
#   the trainer's venv (torch, diffusers, peft; ~6 GB, ~3 GB to download the first time), via
#   scripts/trainer-env.sh. Both are cached under ~/.cache/loraforge and rebuilt only when their
#   pinned lock files change.
# - Chromium and chromedriver (Debian's `chromium`, `chromium-driver`), for the web UI's tests in
#   a real headless browser: installed with apt-get when missing and running as root.
# Build output is cached in ~/.cache/loraforge/target so a fresh clone doesn't rebuild every crate.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${LORAFORGE_CACHE:-$HOME/.cache/loraforge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export LORAFORGE_TEST_POSTGRES_URL="${LORAFORGE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
mkdir -p "$cache"

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found; install Rust from https://rustup.rs and run this again"
command -v python3 >/dev/null || die "python3 not found; install Python 3 (with venv) and run this again"

pg_ready() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

ensure_postgres() {
    # A custom URL means someone else runs the server; only check the default one.
    if [[ "$LORAFORGE_TEST_POSTGRES_URL" != postgres://postgres@127.0.0.1:5432/* ]]; then
        return 0
    fi
    pg_ready && return 0
    if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]] && [[ -n "$(ls /etc/postgresql)" ]]; then
        say "starting the local PostgreSQL cluster"
        local v; v="$(ls /etc/postgresql | sort -V | tail -n1)"
        pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing PostgreSQL (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        local v; v="$(ls /etc/postgresql | sort -V | tail -n1)"
        # Trust auth on loopback, for tests only.
        sed -i 's/^\(host\s\+all\s\+all\s\+127.0.0.1\/32\s\+\)\S\+/\1trust/; s/^\(local\s\+all\s\+postgres\s\+\)\S\+/\1trust/' \
            "/etc/postgresql/$v/main/pg_hba.conf"
        pg_ctlcluster --skip-systemctl-redirect "$v" main start || pg_ctlcluster --skip-systemctl-redirect "$v" main restart
    fi
    for _ in $(seq 1 30); do pg_ready && return 0; sleep 1; done
    die "PostgreSQL is not reachable on 127.0.0.1:5432. Start one with trust auth for user postgres, or set LORAFORGE_TEST_POSTGRES_URL"
}

# Headless Chromium and its WebDriver for the web UI's tests: Debian's packages (no browser
# download at test time).
ensure_chromium() {
    if command -v chromedriver >/dev/null && { command -v chromium >/dev/null || [[ -x /usr/lib/chromium/chromium ]]; }; then
        return 0
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing chromium and chromium-driver (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        die "the web UI's tests need Chromium and chromedriver: install Debian's \`chromium\` and \`chromium-driver\` (or set LORAFORGE_CHROMIUM and LORAFORGE_CHROMEDRIVER)"
    fi
}

say "checking PostgreSQL"
ensure_postgres
say "checking Chromium and chromedriver (web UI tests)"
ensure_chromium
say "preparing the Python test env (moto_server, schemathesis)"
scripts/test-env.sh
say "preparing the trainer's Python env"
scripts/trainer-env.sh
say "checking formatting (cargo fmt --check) and lints (cargo clippy -D warnings)"
cargo fmt --all --check || die "the code is not formatted; run \`cargo fmt --all\` and commit the result"
cargo clippy --workspace --all-targets --locked -- -D warnings
say "running cargo test (target dir $CARGO_TARGET_DIR)"
cargo test --workspace --locked "$@"
say "running the trainer's tests (pytest, CPU, tiny model built at test time)"
(cd trainer && HF_HUB_OFFLINE=1 "$cache/venv-trainer/bin/python" -m pytest -q -p no:cacheprovider)
say "running the RunPod serverless handler's tests (docker/tests, a fake loraforge, no SDK)"
"$cache/venv-trainer/bin/python" -m pytest -q -p no:cacheprovider docker/tests
say "running the Cog model's tests (cog/tests: cog/train.py end to end on the tiny model, no Cog needed)"
(cd cog && HF_HUB_OFFLINE=1 "$cache/venv-trainer/bin/python" -m pytest -q -p no:cacheprovider tests)
