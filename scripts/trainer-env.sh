#!/usr/bin/env bash
# Creates the Python environment the trainer (trainer/, package loraforge_trainer) runs in.
#
# Idempotent (see pinned-venv.sh): the venv lives at
# ${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/venv-trainer and is rebuilt only when
# trainer/requirements.lock or the Python version change. Prints one line.
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

source "$here/pinned-venv.sh"

# The venv's path file naming this checkout's trainer/, rewritten on every run.
link_trainer() {
    local site
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%s\n' "$trainer" >"$site/loraforge-trainer.pth.tmp"
    mv -f "$site/loraforge-trainer.pth.tmp" "$site/loraforge-trainer.pth"
}
trainer_imports() {
    link_trainer
    "$venv/bin/python" -c 'import loraforge_trainer, torch, diffusers, transformers, peft' >/dev/null 2>&1
}

pinned_venv venv-trainer "$lock" trainer_imports
link_trainer
if [[ $venv_rebuilt == 1 ]]; then
    echo "trainer env ready: $venv ($(grep -c '==' "$lock") pinned packages, trainer from $trainer)"
else
    echo "trainer env up to date: $venv"
fi
