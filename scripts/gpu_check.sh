#!/usr/bin/env bash
# The GPU readiness check (docs/gpu.md): installs what the machine lacks from gpu_wheels/
# (scripts/gpu_wheels.sh builds them), runs the tests marked gpu, measures the paper's Table 5 side
# by side, and writes OUTPUT_DIR/gpu_check.json and gpu_check.md, in at most 8 minutes.
#
#   bash scripts/gpu_check.sh OUTPUT_DIR                        # on one GPU
#   bash scripts/gpu_check.sh OUTPUT_DIR --device cpu --tiny    # the CPU dry run (tests/test_gpu_check.py)
#   bash scripts/gpu_check.sh OUTPUT_DIR --help                 # every flag (tools/gpu_check.py)
#
# Exit status 1 if a step failed, overran its budget or did not fit in the time limit.
# Environment: PYTHON, the interpreter (default: the project's .venv where it exists, else python3,
# which on a GPU machine is the one with its CUDA PyTorch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${S2VNET_VENV:-$ROOT/.venv}"
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$VENV/bin/python" ]]; then
    PY="$VENV/bin/python"
else
    PY=python3
fi
[[ $# -ge 1 ]] || { sed -n '2,12p' "$0"; exit 2; }
# The tree's s2vnet, not an installed copy: the check measures the code it was carried with.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/tools/gpu_check.py" "$@"
