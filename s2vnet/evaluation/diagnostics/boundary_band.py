"""The boundary-band DSC: how much of a segmentation's error is outline placement.

A diagnostic, not a benchmark metric: it is computed only with ``tools/eval_volume.py
--diagnostics`` (``band_dsc`` in the per-case rows; docs/evaluation.md, "Diagnostics").
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from s2vnet.evaluation.metrics import check_label_maps, check_protocol, dice_score
from s2vnet.utils.arrays import check_class_ids, class_boxes, union_box
from s2vnet.utils.errors import InputError

__all__ = ["BAND_METRIC", "band_dsc"]

BAND_METRIC = "band_dsc"
"""The name of the band DSC in the per-case rows, results.json and results.csv."""


def band_dsc(
    pred_labels: np.ndarray, gt_labels: np.ndarray, class_ids: Sequence[int], width: int = 1, protocol: str = "standard"
) -> dict[int, float]:
    """Per class, the DSC left if every error voxel outside the in-plane boundary band were corrected.

    The band of class ``c`` is, on every axial slice where both the ground truth and the
    prediction contain ``c``, every pixel within ``width`` 4-connected in-plane steps of the ground
    truth's outline on that slice, inside or outside (``dilation - erosion`` in the slice). Errors
    in it are boundary placement. Errors outside it are regions missed or invented, including whole
    cross-sections at an organ's ends (slices where only one side has the organ): a click can point
    at those, while no click at the deepest point of an error region lands on a one-pixel rim. The
    value is the DSC of the prediction with only its band errors left, so ``band DSC - DSC`` is what
    corrections of the other errors could still gain. (The band is in-plane on purpose: with thick
    slices a 3D band would swallow an organ's first and last cross-sections, which clicks do fix.)
    Where ``c`` is absent from the ground truth the corrected prediction is empty too: NaN under
    ``protocol="standard"`` (both empty), 0 under ``"word"`` (its DSC of an empty mask), as
    :func:`s2vnet.evaluation.metrics.score_case` scores it.

    Label maps are 2D (one slice) or 3D (Z, Y, X) integer arrays of one shape; ``width`` >= 1.
    """
    pred_arr, gt_arr = check_label_maps(pred_labels, gt_labels)
    check_protocol(protocol)
    ids = check_class_ids(class_ids)
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise InputError(f"width={width!r}: the boundary band width must be an integer number of voxels >= 1")
    if gt_arr.ndim == 2:
        pred_arr, gt_arr = pred_arr[None], gt_arr[None]
    # The in-plane cross, as a 3D element that never reaches the neighbouring slices.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    pred_boxes, gt_boxes = class_boxes(pred_arr, ids), class_boxes(gt_arr, ids)
    scores: dict[int, float] = {}
    for c in ids:
        if gt_boxes[c] is None:
            scores[c] = 0.0 if protocol == "word" else math.nan
            continue
        box = union_box(pred_boxes[c], gt_boxes[c])
        # An in-plane margin of `width` lets the dilation reach past the union box; outside it both masks are empty.
        margin = ((0, 0), (width, width), (width, width))
        p = np.pad(pred_arr[box] == c, margin, mode="constant", constant_values=False)
        g = np.pad(gt_arr[box] == c, margin, mode="constant", constant_values=False)
        both = g.any(axis=(1, 2)) & p.any(axis=(1, 2))  # slices where the outline can be misplaced
        band = ndimage.binary_dilation(g, structure, iterations=width) & ~ndimage.binary_erosion(g, structure, iterations=width)
        band &= both[:, None, None]
        corrected = np.where(band, p, g)
        scores[c] = dice_score(corrected, g)
    return scores
