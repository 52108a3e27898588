#!/usr/bin/env bash
# Prepares what the test suites need beyond cargo: a Python venv with moto_server, the
# S3-speaking fake the storage conformance suite (crates/storage/tests) runs against.
#
# Idempotent: the venv lives at ${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/venv-test and is
# rebuilt only when it is missing or its stamp (a hash of the pins below and the Python version)
# differs. Concurrent runs are serialised with a lock file. Prints one line when done.
set -euo pipefail

# Exact pins of everything in the venv (moto[server]==5.2.5 and all it pulls in), frozen in
# requirements-test.txt. Change a version there and the next run rebuilds the venv.
here="$(cd "$(dirname "$0")" && pwd)"
requirements="$here/requirements-test.txt"

python="${PYTHON:-python3}"
cache="${LORAFORGE_CACHE:-$HOME/.cache/loraforge}"
venv="$cache/venv-test"
stamp="$venv/.loraforge-pins"

mkdir -p "$cache"
exec 9>"$cache/venv-test.lock"
flock 9

want="$({ cat "$requirements"; "$python" --version 2>&1; } | sha256sum | cut -d' ' -f1)"

if [[ -x "$venv/bin/moto_server" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "test env up to date: $venv"
    exit 0
fi

# Stale or half-built: start over. The path ends in /venv-test by construction above.
rm -rf -- "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps -r "$requirements"
# The stamp goes last, so an interrupted install is redone on the next run.
printf '%s\n' "$want" >"$stamp"
echo "test env ready: $venv ($(grep -c '==' "$requirements") pinned packages)"
