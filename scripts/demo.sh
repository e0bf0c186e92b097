#!/usr/bin/env bash
# The README's main command: set up (if needed), then run S2VNet end to end on generated CT
# phantoms (train, evaluate automatically and interactively, predict, visualise) on the CPU.
#   bash scripts/demo.sh            full demo (~14-18 min on 2 cores), results in demo_output/
#   bash scripts/demo.sh --quick    ~2-minute smoke run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${S2VNET_VENV:-$ROOT/.venv}/bin/python" tools/demo.py "$@"
