"""Compatibility shims for running Detectron2 v0.6 on current PyTorch, NumPy and Pillow.

Two things break when Detectron2 v0.6 is installed from the PyPI sdist without its C++ extension.
``scripts/setup.sh`` now patches both in the build itself, so the installed package imports on its
own (without S2VNet); the shims here remain for Detectron2 installs made before that patch:

1. ``PIL.Image.LINEAR`` was removed in Pillow 10, but ``detectron2/data/transforms/transform.py``
   uses it as a default argument, so the module fails at import time. It was always an alias of
   ``BILINEAR``; we restore that alias. (The build replaces it with ``BILINEAR`` in the sources.)
2. ``detectron2/layers/{deform_conv,rotated_boxes,roi_align_rotated}.py`` import ``detectron2._C``
   at module level. Without the compiled extension we register :mod:`s2vnet.detectron2_c_stub`
   under that name, whose ops raise a clear error if anything ever calls one. S2VNet calls none
   of them. (The build installs the same stub as ``detectron2/_C.py``.)

Each shim is applied only when needed: a Detectron2 built with its extension or with the stub,
or a Pillow that still has ``LINEAR``, is left untouched.
"""
import importlib
import importlib.util
import logging
import sys

logger = logging.getLogger(__name__)

_EXTENSION_NAME = "detectron2._C"


def _patch_pillow() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def _patch_detectron2_cpp_extension() -> None:
    if _EXTENSION_NAME in sys.modules:
        return
    try:
        has_extension = importlib.util.find_spec(_EXTENSION_NAME) is not None
    except ModuleNotFoundError:  # Detectron2 itself is not installed: nothing to patch.
        return
    if not has_extension:
        from s2vnet import detectron2_c_stub

        sys.modules[_EXTENSION_NAME] = detectron2_c_stub


def detectron2_build() -> str:
    """Describe the installed Detectron2 build ("with C++ ops" or "Python-only")."""
    try:
        extension = importlib.import_module(_EXTENSION_NAME)
    except ImportError:
        return "without C++ ops, not importable on its own"
    if getattr(extension, "PYTHON_ONLY_BUILD", False):
        return "Python-only, without C++ ops"
    return "with C++ ops"


def apply() -> None:
    """Apply the shims that the installed versions need. Idempotent."""
    _patch_pillow()
    _patch_detectron2_cpp_extension()
