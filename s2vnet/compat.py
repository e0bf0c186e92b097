"""Compatibility shims for running Detectron2 v0.6 on current PyTorch, NumPy and Pillow.

Two things break when Detectron2 v0.6 is installed from the PyPI sdist without its C++ extension
(see scripts/setup.sh and docs/installation.md); both are fixed here and nowhere else:

1. ``PIL.Image.LINEAR`` was removed in Pillow 10, but ``detectron2/data/transforms/transform.py``
   uses it as a default argument, so the module fails at import time. It was always an alias of
   ``BILINEAR``; we restore that alias.
2. ``detectron2/layers/{deform_conv,rotated_boxes,roi_align_rotated}.py`` import ``detectron2._C``
   at module level. Without the compiled extension we register a stand-in module whose attributes
   raise a clear error if anything ever calls a C++ op. S2VNet calls none of them.

Each shim is applied only when needed: a Detectron2 built with its extension, or a Pillow that
still has ``LINEAR``, is left untouched.
"""
import importlib.util
import logging
import sys
import types

logger = logging.getLogger(__name__)

_STUB_NAME = "detectron2._C"


class _MissingCppExtension(types.ModuleType):
    """Stands in for ``detectron2._C`` when Detectron2 was built without C++ ops.

    The three build-information functions that ``detectron2.utils.collect_env`` (run by
    ``default_setup`` at the start of training) queries answer truthfully that nothing was
    compiled; every other attribute raises a clear error.
    """

    @staticmethod
    def get_compiler_version() -> str:
        return "none (Python-only Detectron2 build)"

    @staticmethod
    def get_cuda_version() -> str:
        return "none (Python-only Detectron2 build)"

    @staticmethod
    def has_cuda() -> bool:
        return False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"detectron2._C.{name} is unavailable: this Detectron2 was installed without its C++ "
            "extension (scripts/setup.sh fallback). S2VNet does not use these ops; install "
            "Detectron2 from source to use them."
        )


def _patch_pillow() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def _patch_detectron2_cpp_extension() -> None:
    if _STUB_NAME in sys.modules:
        return
    try:
        has_extension = importlib.util.find_spec(_STUB_NAME) is not None
    except ModuleNotFoundError:  # Detectron2 itself is not installed: nothing to patch.
        return
    if not has_extension:
        sys.modules[_STUB_NAME] = _MissingCppExtension(_STUB_NAME)


def detectron2_build() -> str:
    """Describe the installed Detectron2 build ("with C++ ops" or "Python-only")."""
    module = sys.modules.get(_STUB_NAME)
    if isinstance(module, _MissingCppExtension):
        return "Python-only, without C++ ops"
    return "with C++ ops"


def apply() -> None:
    """Apply the shims that the installed versions need. Idempotent."""
    _patch_pillow()
    _patch_detectron2_cpp_extension()
