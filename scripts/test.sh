#!/usr/bin/env bash
# The README's test command: set up with the test extras (if needed), lint (ruff), then run the test suite.
#   bash scripts/test.sh                 everything, slow training checks included (as CI runs it)
#   bash scripts/test.sh -m "not slow"   skip the slow training checks
#   bash scripts/test.sh tests/test_metrics.py -k hd95
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" --extras test
# dciodvfy (Debian's dicom3tools) validates the DICOM-SEG objects of tests/test_dicom_seg.py:
# installed where it is missing and we can (root with apt-get, as in CI); elsewhere that test is skipped.
if ! command -v dciodvfy >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dicom3tools >/dev/null; } \
            || echo "test.sh: installing dicom3tools failed; the DICOM-SEG validation test will be skipped (fails under CI)" >&2
    else
        echo "test.sh: dciodvfy (Debian/Ubuntu package dicom3tools) is missing; the DICOM-SEG validation test will be skipped" >&2
    fi
fi
cd "$ROOT"
PY="${S2VNET_VENV:-$ROOT/.venv}/bin/python"
# Lint first (a second): its settings are in pyproject.toml.
"$PY" -m ruff check s2vnet tools tests datasets
exec "$PY" -m pytest "$@"
