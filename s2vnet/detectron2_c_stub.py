"""Stand-in for ``detectron2._C``, the C++ extension of a Detectron2 built without it.

``scripts/setup.sh`` copies this file into the Detectron2 sources as ``detectron2/_C.py`` before
its offline (Python-only) build, so that the installed package imports on its own:
``detectron2/layers/{deform_conv,rotated_boxes,roi_align_rotated}.py`` and
``detectron2/evaluation/fast_eval_api.py`` import ``_C`` at module level. For Detectron2
installs made before that, :mod:`s2vnet.compat` registers this same module under that name.

The three build-information functions that ``detectron2.utils.collect_env`` queries answer
truthfully that nothing was compiled. Every other attribute is a function that raises a clear
error when called, so importing and inspecting Detectron2 works and only a real use of a C++ op
fails.

This file must import nothing from s2vnet: inside Detectron2 it stands alone.
"""
from typing import Any, Callable, NoReturn

#: Marks this module, so that callers can tell it from a compiled extension.
PYTHON_ONLY_BUILD = True

_NOT_COMPILED = "none (Python-only Detectron2 build)"


def get_compiler_version() -> str:
    return _NOT_COMPILED


def get_cuda_version() -> str:
    return _NOT_COMPILED


def has_cuda() -> bool:
    return False


def __getattr__(name: str) -> Callable[..., NoReturn]:
    if name.startswith("__"):  # module protocol lookups (__path__, __wrapped__, ...): absent
        raise AttributeError(f"module 'detectron2._C' has no attribute {name!r}")

    def unavailable(*args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError(
            f"detectron2._C.{name} is unavailable: this Detectron2 was built without its C++ "
            "extension (the offline build of S2VNet's scripts/setup.sh). S2VNet uses none of these "
            "ops; install Detectron2 from source (pip install --no-build-isolation "
            "git+https://github.com/facebookresearch/detectron2.git) to use them."
        )

    unavailable.__name__ = unavailable.__qualname__ = name
    return unavailable
