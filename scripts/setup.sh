#!/usr/bin/env bash
# Installs everything S2VNet needs into a virtualenv, idempotently.
#
#   bash scripts/setup.sh                 # runtime: torch, Detectron2, requirements.txt, s2vnet
#   bash scripts/setup.sh --extras test   # + requirements-test.txt (pytest, MONAI, surface-distance, MedPy)
#   bash scripts/setup.sh --extras bench  # + requirements-bench.txt (MONAI for the 3D reference)
#
# Environment:
#   S2VNET_VENV   where the virtualenv lives (default: <repo>/.venv)
#   PYTHON        interpreter that creates it (default: python3, needs >= 3.9)
#   S2VNET_DETECTRON2_SOURCE   pip requirement for the official Detectron2 source install
#                 (default: git+https://github.com/facebookresearch/detectron2.git)
#
# Detectron2 is not on PyPI. Where GitHub is reachable we install the official source; otherwise
# we build the PyPI sdist `pb1-detectron2==0.6` (Detectron2 v0.6's Python sources) with its C++
# extension list emptied and patched so that it imports on its own, without s2vnet: a stub
# `detectron2/_C.py` (s2vnet/detectron2_c_stub.py) whose ops raise a clear error when called, and
# Pillow 10's `Image.BILINEAR` for the removed `Image.LINEAR`. S2VNet uses none of those C++ ops.
# An installed Detectron2 that does not import on its own (an offline build from before that
# patch) is rebuilt. A second run with everything in place returns in seconds.
#
# Sourcing this file (`source scripts/setup.sh`) only defines its functions (the tests use that).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${S2VNET_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
D2_SOURCE="${S2VNET_DETECTRON2_SOURCE:-git+https://github.com/facebookresearch/detectron2.git}"
D2_STUB="$ROOT/s2vnet/detectron2_c_stub.py"
EXTRAS=""

log() { echo "[setup] $*"; }
die() { echo "setup.sh: $*" >&2; exit 1; }

# pip, quiet, but with its exit status intact and its output shown when it fails. (Lines about
# "ignored" local index folders come from this machine's global pip config and are dropped.)
# Uses the array PIP (the venv's pip), set below.
pip_quiet() {
    local out
    if ! out="$("${PIP[@]}" "$@" 2>&1)"; then
        grep -v "is ignored" <<< "$out" >&2
        echo "setup.sh: 'pip $*' failed" >&2
        return 1
    fi
}

# Whether the Detectron2 that interpreter $1 sees imports on its own, without s2vnet's shims.
detectron2_usable() {
    "$1" -c "from detectron2.modeling import build_model; import detectron2.data.transforms" >/dev/null 2>&1
}

# Make the unpacked pb1-detectron2 sources in $1 build without C++ and import on their own.
patch_detectron2_sdist() {
    local src="$1" stale
    sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$src/setup.py"
    grep -q 'ext_modules=\[\],' "$src/setup.py" || die "could not disable the C++ extension in $src/setup.py"
    # Pillow 10 removed Image.LINEAR, always an alias of BILINEAR (a default argument, evaluated at import).
    grep -rlZ --include='*.py' 'Image\.LINEAR\b' "$src" | xargs -0 -r sed -i 's/Image\.LINEAR\b/Image.BILINEAR/g'
    stale="$(grep -rl --include='*.py' 'Image\.LINEAR\b' "$src" || true)"
    [[ -z "$stale" ]] || die "Image.LINEAR is still used in: $stale"
    # Four modules import detectron2._C at module level: a Python stub stands in for the extension.
    [[ -d "$src/detectron2" ]] || die "$src/detectron2 not found: not a Detectron2 source tree"
    cp "$D2_STUB" "$src/detectron2/_C.py"
}

install_detectron2_sdist() {
    # Detectron2 v0.6 from the PyPI sdist, built without its C++ extension. Its setup.py imports
    # torch even to read metadata, hence --no-build-isolation; --no-deps because its
    # install_requires pins outdated black/fvcore/iopath (the real needs are in requirements.txt).
    # Arguments are passed on to `pip install` (e.g. --target DIR).
    local work
    work="$(mktemp -d)"
    pip_quiet download -q --no-deps --no-binary :all: --no-build-isolation "pb1-detectron2==0.6" -d "$work"
    tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
    patch_detectron2_sdist "$work/pb1-detectron2-0.6"
    # Built from outside the source tree, so that nothing imports the unbuilt package by accident.
    (cd "$work" && pip_quiet install -q --no-deps --no-build-isolation "$@" "./pb1-detectron2-0.6")
    rm -rf "$work"
}

if (return 0 2>/dev/null); then  # `return` works only in a sourced file
    return 0  # sourced: the functions above are all that was wanted
fi

while [[ $# -gt 0 ]]; do
    case "$1" in
        --extras) EXTRAS="${2:?--extras needs a value: test, bench or test,bench}"; shift 2 ;;
        --extras=*) EXTRAS="${1#--extras=}"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

requirement_files=("$ROOT/requirements.txt")
IFS=',' read -r -a extra_list <<< "$EXTRAS"
for extra in "${extra_list[@]}"; do
    [[ -z "$extra" ]] && continue
    file="$ROOT/requirements-$extra.txt"
    [[ -f "$file" ]] || { echo "setup.sh: unknown extra '$extra' (no $file)" >&2; exit 2; }
    requirement_files+=("$file")
done

# The stamp records what the venv was built from; if nothing changed and the imports work,
# there is nothing to do.
stamp_file="$VENV/.s2vnet-setup-stamp"
stamp="$(cat "${requirement_files[@]}" "$ROOT/setup.py" "$ROOT/scripts/setup.sh" "$D2_STUB" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] \
   && detectron2_usable "$VENV/bin/python" && "$VENV/bin/python" -c "import s2vnet" >/dev/null 2>&1; then
    log "environment in $VENV is up to date ($("$VENV/bin/python" -c 'import detectron2; print("Detectron2", detectron2.__version__)' 2>/dev/null))"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

log "installing requirements: ${requirement_files[*]##*/}"
pip_quiet install -q "setuptools>=64" wheel
req_args=()
for file in "${requirement_files[@]}"; do req_args+=(-r "$file"); done
pip_quiet install -q "${req_args[@]}"
"$PY" -c "import torch, torchvision" || { echo "setup.sh: torch/torchvision failed to install" >&2; exit 1; }

if detectron2_usable "$PY"; then
    log "Detectron2 already installed"
else
    if "${PIP[@]}" show -q pb1-detectron2 >/dev/null 2>&1; then
        log "the installed offline Detectron2 build does not import on its own (built before setup.sh patched it): replacing it"
        pip_quiet uninstall -y pb1-detectron2
    fi
    if timeout 15 git ls-remote https://github.com/facebookresearch/detectron2 HEAD >/dev/null 2>&1; then
        log "GitHub reachable: installing the official Detectron2 source ($D2_SOURCE)"
        pip_quiet install -q --no-build-isolation "$D2_SOURCE"
    else
        log "GitHub not reachable: building Detectron2 v0.6 from the PyPI sdist pb1-detectron2 without C++ ops"
        install_detectron2_sdist
    fi
    detectron2_usable "$PY" || die "the installed Detectron2 does not import on its own (try: $PY -c 'import detectron2.modeling')"
fi

log "installing s2vnet (editable)"
pip_quiet install -q --no-deps --no-build-isolation -e "$ROOT"

"$PY" - <<'EOF'
import detectron2, s2vnet, torch
from s2vnet.compat import detectron2_build
print(f"[setup] torch {torch.__version__}, Detectron2 {detectron2.__version__} ({detectron2_build()}), s2vnet {s2vnet.__version__}")
EOF
echo "$stamp" > "$stamp_file"
log "done: activate with 'source $VENV/bin/activate'"
