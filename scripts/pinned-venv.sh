# Sourced by test-env.sh and trainer-env.sh: one way to keep a Python venv that matches a lock
# file of exact pins.
#
#   pinned_venv NAME LOCKFILE [CHECK_COMMAND…]
#
# The venv lives at ${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/NAME; sets $venv. It is rebuilt
# only when missing or when its stamp (a hash of LOCKFILE and the Python version) differs.
# Concurrent runs are serialised with a lock file. After a rebuild, CHECK_COMMAND (if given)
# must succeed before the stamp is written; the stamp goes last, so an interrupted or broken
# install is redone on the next run. Sets $venv_rebuilt to 1 after a rebuild, else 0.
pinned_venv() {
    local name="$1" lock="$2"
    shift 2
    local python="${PYTHON:-python3}"
    local cache="${LORAFORGE_CACHE:-$HOME/.cache/loraforge}"
    venv="$cache/$name"
    venv_rebuilt=0
    local stamp="$venv/.loraforge-pins"
    mkdir -p "$cache"
    exec 9>"$cache/$name.lock"
    flock 9
    local want
    want="$({ cat "$lock"; "$python" --version 2>&1; } | sha256sum | cut -d' ' -f1)"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    # Stale or half-built: start over. The path ends in /NAME by construction above.
    rm -rf -- "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps -r "$lock"
    if [[ $# -gt 0 ]]; then
        "$@" || { echo "$name is broken after installing $lock (check failed: $*)" >&2; return 1; }
    fi
    printf '%s\n' "$want" >"$stamp"
    venv_rebuilt=1
}
