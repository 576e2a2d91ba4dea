#!/usr/bin/env bash
# Run one pipeline stage (what dvc.yaml's commands call): `bash scripts/stage.sh NAME [ARGS...]` runs
# `python -m stages.NAME` with the checkout's .venv/bin/python when there is one, so `.venv/bin/dvc repro` works
# without activating the venv; elsewhere (worker images, CI workspaces) with the python on PATH.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash scripts/stage.sh STAGE [ARGS...]" >&2; exit 2; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
[ -x "$py" ] || py=python
cd "$root"
exec "$py" -m "stages.$1" "${@:2}"
