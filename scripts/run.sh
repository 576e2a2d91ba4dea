#!/usr/bin/env bash
# The main job on a fresh machine: install everything (system packages included), then `dvc repro` the
# pipeline with the params in params.yaml (the CPU profile on Lift by default) and print the report's path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export MUJOCO_GL="${MUJOCO_GL:-egl}" PREFECT_SERVER_ANALYTICS_ENABLED=false
dvc repro "$@"
echo
echo "Report: $PWD/reports/report.html"
dvc metrics show metrics/eval.json 2>/dev/null || true
