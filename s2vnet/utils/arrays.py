"""Argument checks and bounding boxes for label volumes, shared by click simulation
(:mod:`s2vnet.data.clicks`) and the metrics (:mod:`s2vnet.evaluation.metrics`).

A bounding box is a tuple of slices, one per array axis, as :func:`scipy.ndimage.find_objects`
returns it; ``None`` stands for the box of an empty mask.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Optional

import numpy as np
from scipy import ndimage

from s2vnet.utils.errors import InputError

__all__ = ["Box", "check_class_ids", "check_spacing", "mask_box", "union_box", "class_boxes"]

Box = tuple[slice, ...]
"""A bounding box: one slice per array axis."""

# find_objects returns a list as long as the largest label it is asked for; ids above this get a
# pass of their own instead of a list of that length.
_FIND_OBJECTS_MAX_LABEL = 1 << 16


def check_class_ids(class_ids: Sequence[int]) -> list[int]:
    """``class_ids`` as a list of ``int``, in the given order.

    Every id must be a non-negative integer (0 = background is a class like any other), and no id
    may be listed twice: a duplicate is almost always a caller's mistake, and quietly merging it
    would change how many rows, scores or clicks the caller gets back.

    Raises:
        InputError: not a sequence, an id that is not a non-negative integer, or a duplicate.
    """
    if isinstance(class_ids, (str, bytes)) or not isinstance(class_ids, (Sequence, np.ndarray)):
        raise InputError(f"class_ids {class_ids!r} must be a sequence of integer class ids")
    ids: list[int] = []
    for c in class_ids:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Integral):
            raise InputError(f"class id {c!r} in class_ids {list(class_ids)!r} is not an integer")
        if c < 0:
            raise InputError(f"class id {c!r} in class_ids {list(class_ids)!r} is negative; class ids are labels >= 0")
        ids.append(int(c))
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise InputError(f"class_ids {list(class_ids)!r} lists class(es) {duplicates} more than once")
    return ids


def check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    """``spacing`` as a float64 array: one finite, strictly positive voxel size (mm) per array axis.

    Raises:
        InputError: not a sequence of ``ndim`` numbers, or a value that is not finite and positive.
    """
    if isinstance(spacing, (str, bytes)) or not isinstance(spacing, (Sequence, np.ndarray)):
        raise InputError(
            f"spacing {spacing!r} must be a sequence of {ndim} voxel sizes in mm, one per array axis"
        )
    try:
        values = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"spacing {spacing!r} is not a sequence of numbers") from exc
    if values.ndim != 1 or values.size != ndim:
        raise InputError(
            f"spacing {spacing!r} has {values.size} values but the arrays have {ndim} axes; "
            "give one voxel size in mm per array axis"
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"spacing {spacing!r} must contain finite, strictly positive voxel sizes in mm")
    return values


def mask_box(mask: np.ndarray) -> Optional[Box]:
    """Bounding box of a boolean mask's foreground, or None when the mask is empty."""
    # find_objects does the whole scan in one C pass; bool has the itemsize of uint8.
    return ndimage.find_objects(mask.view(np.uint8), max_label=1)[0]


def union_box(a: Optional[Box], b: Optional[Box]) -> Optional[Box]:
    """The smallest box holding both boxes (None only when both are None)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def class_boxes(labels: np.ndarray, class_ids: Sequence[int]) -> dict[int, Optional[Box]]:
    """Bounding box of every class of ``class_ids`` in an integer label map (None when absent).

    All ids in 1..65536 are found in one pass over the volume (:func:`scipy.ndimage.find_objects`
    skips labels <= 0 and larger ones, e.g. an ignore value of 255 when only 1..7 are asked for);
    any other id, background 0 included, gets a pass of its own. The dict lists those one-pass ids
    first, then the others, each group in the order of ``class_ids``.
    """
    boxes: dict[int, Optional[Box]] = {}
    listed = [c for c in class_ids if 0 < c <= _FIND_OBJECTS_MAX_LABEL]
    if listed:
        found = ndimage.find_objects(labels, max_label=max(listed))
        for c in listed:
            boxes[c] = found[c - 1]
    for c in class_ids:
        if c not in boxes:
            boxes[c] = mask_box(labels == c)
    return boxes
