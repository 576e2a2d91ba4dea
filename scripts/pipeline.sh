#!/usr/bin/env bash
# Run a pipeline/ entry point from a dvc.yaml command: `bash scripts/pipeline.sh MODULE [ARGS...]` runs
# `python -m pipeline.MODULE` with the checkout's .venv/bin/python when there is one, else the python on PATH
# (as scripts/stage.sh does for stages). The ingest stage runs as `bash scripts/pipeline.sh sources`: the
# object store is the pipeline's, so it fetches an s3:// demo source and then runs stages.ingest on it.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash scripts/pipeline.sh MODULE [ARGS...]" >&2; exit 2; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
[ -x "$py" ] || py=python
cd "$root"
exec "$py" -m "pipeline.$1" "${@:2}"
