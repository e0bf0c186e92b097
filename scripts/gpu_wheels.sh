#!/usr/bin/env bash
# Builds, here (with network), the wheels that the GPU check (scripts/gpu_check.sh, docs/gpu.md)
# installs on a GPU machine without network.
#
#   bash scripts/gpu_wheels.sh [OUT_DIR]      # default: <repo>/gpu_wheels (git-ignored)
#
# The GPU machine is assumed to have Python 3.12 with PyTorch (>= 2.11), timm, scipy, OpenCV,
# TensorBoard, einops, PyYAML, tqdm, Pillow, tabulate, portalocker, cloudpickle and pytest, but not
# Detectron2, its FAIR helpers, nibabel or MONAI. The wheels are exactly what the check imports on
# top of that:
#   - Detectron2 v0.6, built from the PyPI sdist pb1-detectron2 with the patch scripts/setup.sh
#     applies offline (no C++ extension: a Python stub stands in for detectron2._C);
#   - Detectron2's own imports: fvcore, iopath, yacs, termcolor, omegaconf and its antlr4 runtime;
#     pycocotools (detectron2.structures imports it);
#   - nibabel (volume I/O) and MONAI (the 3D references of the benchmark);
#   - s2vnet itself.
# SimpleITK (50 MB) is not carried: s2vnet imports it only where a non-NIfTI format is read or
# written. Packages with no wheel on PyPI (fvcore, iopath, antlr4) are pure Python and are built
# here from their sdists. The total must fit the 64 MiB a GPU call may carry (checked).
#
# Environment:
#   PYTHON              interpreter that builds the wheels, with torch, setuptools and wheel
#                       (Detectron2's setup.py imports torch) (default: <repo>/.venv/bin/python)
#   S2VNET_WHEELS_PYTHON_VERSION   Python version of the GPU machine (default: 3.12)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_PY="${PYTHON:-$ROOT/.venv/bin/python}"  # read before setup.sh gives PYTHON its own default
# Defines patch_detectron2_sdist (sourcing runs nothing else); our own log/die below replace its.
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"

OUT="${1:-$ROOT/gpu_wheels}"
TARGET_PY="${S2VNET_WHEELS_PYTHON_VERSION:-3.12}"
LIMIT_MIB=64

# Versions this repository is tested with (the test environment's); one version of each, since two
# wheels of one package stop a whole `pip install`.
WHEELS=(
    nibabel==5.4.2
    monai==1.6.1
    pycocotools==2.0.11
    fvcore==0.1.5.post20221221
    iopath==0.1.10
    yacs==0.1.8
    termcolor==3.3.0
    omegaconf==2.3.1
    antlr4-python3-runtime==4.9.3
)
D2_SDIST="pb1-detectron2==0.6"

log() { echo "[gpu_wheels] $*"; }
die() { echo "gpu_wheels.sh: $*" >&2; exit 1; }

[[ -x "$BUILD_PY" ]] || die "no build interpreter at $BUILD_PY (run scripts/setup.sh, or set PYTHON)"
"$BUILD_PY" -c "import torch, setuptools, wheel" 2>/dev/null \
    || die "$BUILD_PY lacks torch, setuptools or wheel (Detectron2's setup.py imports torch)"
PIP=("$BUILD_PY" -m pip --disable-pip-version-check)

mkdir -p "$OUT"
rm -f "$OUT"/*.whl  # a stale second version of a package would stop the install there
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A wheel for Python $TARGET_PY on manylinux x86-64; pure-Python sdists (no wheel on PyPI) are built
# here instead, and must come out as py3-none-any.
for requirement in "${WHEELS[@]}"; do
    if pip_quiet download -q --no-deps --only-binary :all: --python-version "$TARGET_PY" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$OUT" "$requirement" 2>/dev/null; then
        log "downloaded $requirement"
    else
        mkdir -p "$work/sdist"
        pip_quiet wheel -q --no-deps --no-binary "${requirement%%==*}" -w "$work/sdist" "$requirement"
        built=("$work"/sdist/*.whl)
        [[ ${#built[@]} -eq 1 && "${built[0]}" == *-none-any.whl ]] \
            || die "$requirement has no wheel for Python $TARGET_PY and its sdist did not build as pure Python: ${built[*]##*/}"
        mv "${built[0]}" "$OUT/"
        rm -rf "$work/sdist"
        log "built $requirement from its sdist (pure Python)"
    fi
done

# Detectron2 v0.6 from its sdist, patched as scripts/setup.sh does offline, then built as a wheel.
pip_quiet download -q --no-deps --no-binary :all: --no-build-isolation "$D2_SDIST" -d "$work"
tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
patch_detectron2_sdist "$work/pb1-detectron2-0.6"
# Built from outside the source tree, so that nothing imports the unbuilt package by accident.
(cd "$work" && pip_quiet wheel -q --no-deps --no-build-isolation -w "$OUT" "./pb1-detectron2-0.6")
log "built Detectron2 v0.6 (no C++ ops)"

# From a copy of what setup.py packs: building in the tree would reuse its build/ folder, whose
# stale copies of modules removed since would end up in the wheel.
mkdir -p "$work/s2vnet-src"
cp -r "$ROOT/setup.py" "$ROOT/README.md" "$ROOT"/requirements*.txt "$ROOT/s2vnet" "$work/s2vnet-src/"
find "$work/s2vnet-src" -name __pycache__ -prune -exec rm -rf {} +
(cd "$work" && pip_quiet wheel -q --no-deps --no-build-isolation -w "$OUT" "./s2vnet-src")
log "built s2vnet"

# What a GPU call may carry, the working tree included (docs/gpu.md).
total_bytes="$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)"
total_mib="$(awk -v b="$total_bytes" 'BEGIN { printf "%.1f", b / 1048576 }')"
ls -l "$OUT"/*.whl | awk '{ printf "[gpu_wheels]   %8.2f MiB  %s\n", $5 / 1048576, $NF }' | sed "s|$OUT/||"
if (( total_bytes > LIMIT_MIB * 1048576 )); then
    die "the wheels in $OUT take $total_mib MiB, over the $LIMIT_MIB MiB a GPU call may carry"
fi
log "$(ls "$OUT"/*.whl | wc -l) wheels, $total_mib MiB in all (limit $LIMIT_MIB MiB), in $OUT"
