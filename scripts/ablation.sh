#!/usr/bin/env bash
# The paper's Table 4 on CT phantoms: trains 3 models (no propagation / propagation /
# propagation + aggregation) with one budget and seed, evaluates 6 rows, writes ablation_output/table4.md.
#   bash scripts/ablation.sh [--iters N] [--rounds R]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${S2VNET_VENV:-$ROOT/.venv}/bin/python" tools/ablation.py "$@"
