#!/usr/bin/env bash
# The README's test command: set up with the test extras (if needed), lint (ruff), then run the test suite.
#   bash scripts/test.sh                 everything, slow training checks included (as CI runs it)
#   bash scripts/test.sh -m "not slow"   skip the slow training checks
#   bash scripts/test.sh tests/test_metrics.py -k hd95
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" --extras test
cd "$ROOT"
PY="${S2VNET_VENV:-$ROOT/.venv}/bin/python"
# Lint first (a second): its settings are in pyproject.toml.
"$PY" -m ruff check s2vnet tools tests datasets
exec "$PY" -m pytest "$@"
