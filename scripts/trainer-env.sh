#!/usr/bin/env bash
# Creates the Python environment the trainer (trainer/, package loraforge_trainer) runs in.
#
# Idempotent: the venv lives at ${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/venv-trainer and is
# rebuilt only when it is missing or its stamp (a hash of trainer/requirements.lock and the
# Python version) differs. Concurrent runs are serialised with a lock file. Prints one line.
#
# The trainer package itself is not pip-installed: the venv gets a path file
# (site-packages/loraforge-trainer.pth) naming this checkout's trainer/ folder, rewritten on
# every run, so `$venv/bin/python -m loraforge_trainer` runs the current source (like an
# editable install, without a build step). Any other interpreter that has the locked packages
# can use `PYTHONPATH=<repo>/trainer` instead.
#
# The lock pins torch from PyPI with its CUDA libraries (~3 GB): the same venv trains on a GPU
# host and runs the CPU tests. The first build downloads it; later runs are a stamp check.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
trainer="$(cd "$here/../trainer" && pwd)"
lock="$trainer/requirements.lock"

python="${PYTHON:-python3}"
cache="${LORAFORGE_CACHE:-$HOME/.cache/loraforge}"
venv="$cache/venv-trainer"
stamp="$venv/.loraforge-pins"

mkdir -p "$cache"
exec 9>"$cache/venv-trainer.lock"
flock 9

want="$({ cat "$lock"; "$python" --version 2>&1; } | sha256sum | cut -d' ' -f1)"

link_trainer() {
    local site
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%s\n' "$trainer" >"$site/loraforge-trainer.pth.tmp"
    mv -f "$site/loraforge-trainer.pth.tmp" "$site/loraforge-trainer.pth"
}

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    link_trainer
    echo "trainer env up to date: $venv"
    exit 0
fi

# Stale or half-built: start over. The path ends in /venv-trainer by construction above.
rm -rf -- "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps -r "$lock"
link_trainer
"$venv/bin/python" -c 'import loraforge_trainer, torch, diffusers, transformers, peft' >/dev/null 2>&1 || {
    echo "trainer env broken: cannot import the trainer's packages in $venv" >&2
    exit 1
}
# The stamp goes last, so an interrupted install is redone on the next run.
printf '%s\n' "$want" >"$stamp"
echo "trainer env ready: $venv ($(grep -c '==' "$lock") pinned packages, trainer from $trainer)"
