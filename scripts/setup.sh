#!/usr/bin/env bash
# Set up a fresh machine: system packages from apt-packages.txt, then the project in .venv (pinned deps).
# Idempotent: re-running skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=$(grep -v '^\s*#' apt-packages.txt | tr -s ' \n' ' ')
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "[setup] apt packages:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
if ! .venv/bin/python -c "import ogpo, torch, robosuite, prefect, dvc" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "[setup] installing the project and its pinned dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  # docker/constraints.txt pins every transitive package to the tested set (the worker image uses it too)
  .venv/bin/pip install -q -c docker/constraints.txt -e ".[dev]"
  .venv/bin/pip check
  touch .venv/.installed
fi
echo "[setup] ready: $(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
