#!/usr/bin/env bash
# Prepares what the test suites need beyond cargo: a Python venv with moto_server, the
# S3-speaking fake the storage conformance suite (crates/storage/tests) runs against,
# botocore, whose SigV4 presigner that suite checks our presigned URLs with, and schemathesis,
# the schema-driven fuzzer the API's OpenAPI test (crates/server/tests/api/schemathesis.rs)
# runs against a live server.
#
# Idempotent (see pinned-venv.sh): the venv lives at
# ${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/venv-test and is rebuilt only when the pins or the
# Python version change. Prints one line when done.
set -euo pipefail

# Exact pins of everything in the venv (moto[server]==5.2.5, schemathesis==4.32.5 and all they
# pull in), frozen in requirements-test.txt. Change a version there and the next run rebuilds
# the venv.
here="$(cd "$(dirname "$0")" && pwd)"
requirements="$here/requirements-test.txt"
source "$here/pinned-venv.sh"

venv_works() {
    "$venv/bin/python" -c 'import moto.server, standardwebhooks' >/dev/null 2>&1 &&
        "$venv/bin/st" --version >/dev/null 2>&1
}
pinned_venv venv-test "$requirements" venv_works
if [[ $venv_rebuilt == 1 ]]; then
    echo "test env ready: $venv ($(grep -c '==' "$requirements") pinned packages)"
else
    echo "test env up to date: $venv"
fi
