#!/usr/bin/env bash
# Assembles the Cog build folder for loraforge's trainer: `cog/stage.sh DIR`, then `cd DIR &&
# cog push r8.im/OWNER/NAME` (cog/README.md). DIR is created (it must not exist, or be empty).
#
# DIR gets cog.yaml and train.py from cog/, the trainer package (trainer/loraforge_trainer,
# without caches) and the trainer's lock as requirements.txt, so the image runs exactly the
# checkout's trainer with exactly its pinned packages (one source: trainer/requirements.lock).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dest="${1:?usage: cog/stage.sh DIR}"

if [[ -e "$dest" && -n "$(ls -A "$dest")" ]]; then
    echo "error: $dest exists and is not empty" >&2
    exit 1
fi
mkdir -p "$dest"
cp "$here/cog.yaml" "$here/train.py" "$dest/"
cp "$repo/trainer/requirements.lock" "$dest/requirements.txt"
mkdir "$dest/loraforge_trainer"
find "$repo/trainer/loraforge_trainer" -maxdepth 1 -type f -name '*.py' -exec cp {} "$dest/loraforge_trainer/" \;
echo "staged the Cog model in $dest ($(grep -c '==' "$dest/requirements.txt") pinned packages)"
