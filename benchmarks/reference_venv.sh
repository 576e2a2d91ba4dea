#!/usr/bin/env bash
# Creates the venv that runs the official JAX/Flax OGPO agent for `benchmarks/update.py --reference DIR`.
#
#   bash benchmarks/reference_venv.sh [VENV]     (default: $HOME/.cache/ogpo/reference-venv)
#
# CPU-only jax/jaxlib plus what the official update path imports (flax, optax, chex, distrax, einops, pyyaml).
# The versions are the ones the official code's update path was run with here (Python 3.11). Idempotent:
# an existing venv with these pins is left as it is. Nothing of the official code is installed; the driver
# imports it from DIR at run time.
set -euo pipefail

VENV="${1:-${HOME}/.cache/ogpo/reference-venv}"
PYTHON="${REFERENCE_PYTHON:-python3.11}"
PINS=(
  "jax==0.10.2" "jaxlib==0.10.2" "flax==0.12.8" "optax==0.2.8" "chex==0.1.92" "distrax==0.1.9"
  "einops==0.8.1" "numpy<3" "pyyaml>=6"
)

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "reference_venv.sh: $PYTHON not found (set REFERENCE_PYTHON to a Python 3.11 interpreter)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi

if "$VENV/bin/python" - "${PINS[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    if not req.specifier.contains(version(req.name), prereleases=True):
        sys.exit(1)
PY
  echo "reference venv up to date: $VENV"
else
  "$VENV/bin/python" -m pip install --quiet --upgrade pip packaging
  "$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
  echo "reference venv ready: $VENV"
fi
# The driver forces the CPU backend (JAX_PLATFORMS=cpu); check that the install imports.
JAX_PLATFORMS=cpu "$VENV/bin/python" -c "import jax, flax, optax, chex, distrax; print('jax', jax.__version__, jax.devices())"
