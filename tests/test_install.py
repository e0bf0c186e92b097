"""The installation: the Detectron2 that scripts/setup.sh installs imports on its own.

A researcher's own Detectron2 script in our environment must work without importing s2vnet
first, so the offline (Python-only) build is patched in its sources, not only by s2vnet's shims.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP_SH = REPO / "scripts" / "setup.sh"

# Imported in a fresh interpreter that never imports s2vnet.
STANDALONE_IMPORTS = (
    "import sys\n"
    "from detectron2.modeling import build_model\n"
    "import detectron2.data.transforms\n"
    "import detectron2.layers\n"
    "assert not [m for m in sys.modules if m.split('.')[0] == 's2vnet'], 's2vnet was imported'\n"
)


def test_installed_detectron2_imports_without_s2vnet():
    result = subprocess.run([sys.executable, "-c", STANDALONE_IMPORTS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        "the installed Detectron2 does not import on its own; re-run `bash scripts/setup.sh` "
        f"(it rebuilds an offline build made before the patch):\n{result.stderr[-2000:]}"
    )


def _fake_sdist(root: Path) -> Path:
    """The three places of pb1-detectron2-0.6 that the offline build patches, in miniature."""
    (root / "detectron2" / "data" / "transforms").mkdir(parents=True)
    (root / "detectron2" / "layers").mkdir()
    (root / "setup.py").write_text("setup(\n    ext_modules=get_extensions(),\n)\n")
    (root / "detectron2" / "__init__.py").write_text("")
    (root / "detectron2" / "data" / "__init__.py").write_text("")
    (root / "detectron2" / "data" / "transforms" / "__init__.py").write_text("")
    (root / "detectron2" / "data" / "transforms" / "transform.py").write_text(
        "from PIL import Image\n\n\ndef resize(interp=Image.LINEAR, other=Image.BILINEAR):\n    return interp, other\n"
    )
    (root / "detectron2" / "layers" / "__init__.py").write_text("")
    (root / "detectron2" / "layers" / "rotated_boxes.py").write_text(
        "from detectron2 import _C\n\n\ndef pairwise_iou_rotated(a, b):\n    return _C.box_iou_rotated(a, b)\n"
    )
    return root


def test_offline_build_patch_makes_the_sources_import_on_their_own(tmp_path):
    src = _fake_sdist(tmp_path / "pb1-detectron2-0.6")
    env = {**os.environ, "PYTHON": "false"}  # had sourcing run the installer, it would stop at once
    subprocess.run(["bash", "-c", 'source "$1" && patch_detectron2_sdist "$2"', "bash", str(SETUP_SH), str(src)], check=True, env=env, timeout=60)
    assert "ext_modules=[]," in (src / "setup.py").read_text()
    assert "Image.LINEAR" not in (src / "detectron2" / "data" / "transforms" / "transform.py").read_text()
    assert (src / "detectron2" / "_C.py").read_text() == (REPO / "s2vnet" / "detectron2_c_stub.py").read_text()
    check = (
        "import detectron2.data.transforms.transform as t\n"
        "from PIL import Image\n"
        "assert t.resize() == (Image.BILINEAR, Image.BILINEAR)\n"
        "from detectron2 import _C\n"
        "from detectron2.layers.rotated_boxes import pairwise_iou_rotated\n"
        "print(_C.get_compiler_version(), _C.has_cuda())\n"
        "try:\n"
        "    pairwise_iou_rotated(None, None)\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    # Only the patched tree on the path (-I: no site-packages, no PYTHONPATH), so no s2vnet shim can help.
    pillow = Path(__import__("PIL").__file__).parents[1]
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path[:0] = [{str(src)!r}, {str(pillow)!r}]\n" + check],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Python-only" in result.stdout and "False" in result.stdout
    assert "detectron2._C.box_iou_rotated is unavailable" in result.stdout


def test_stub_ops_fail_only_when_called():
    from s2vnet import detectron2_c_stub as stub

    assert stub.PYTHON_ONLY_BUILD and not stub.has_cuda()
    op = stub.deform_conv_forward  # looking an op up (import time, introspection) is fine
    assert op.__name__ == "deform_conv_forward"
    with pytest.raises(RuntimeError, match="deform_conv_forward is unavailable.*without its C\\+\\+ extension"):
        op(1, 2)
    assert not hasattr(stub, "__path__")  # not mistaken for a package


def test_setup_stamp_covers_the_detectron2_patch():
    """Existing venvs are rebuilt when the patch changes: the stamp hashes setup.sh and the stub,
    and the up-to-date check also requires Detectron2 to import on its own."""
    text = SETUP_SH.read_text()
    stamp_line = next(line for line in text.splitlines() if line.startswith("stamp="))
    assert '"$ROOT/scripts/setup.sh"' in stamp_line and '"$D2_STUB"' in stamp_line
    assert 'detectron2_usable "$VENV/bin/python"' in text
