"""Intensity normalisation to uint8 (paper supplement §A; docs/data.md).

- CT: clip to the abdominal window [-175, 250] HU, rescale linearly to [0, 255].
- MRI: clip to the volume's 0.5th and 99.5th percentiles, rescale linearly to [0, 255].

Values are rounded to the nearest integer (ties to even, numpy's ``rint``) and stored as uint8,
the format of the prepared slice cache.

The modality comes from the dataset: the nnU-Net ``dataset.json`` channel name
(:func:`modality_from_channel_name`) or, for AMOS, the case id (:func:`amos_modality`).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "AMOS_FIRST_MR_ID",
    "CT_WINDOW",
    "MRI_PERCENTILES",
    "amos_modality",
    "modality_from_channel_name",
    "normalize_intensity",
]

#: CT window in HU (paper supplement §A).
CT_WINDOW = (-175.0, 250.0)
#: Percentiles of the MRI volume clipped to (paper supplement §A).
MRI_PERCENTILES = (0.5, 99.5)
#: AMOS numbers its CT cases below 500 and its MRI cases from 500 on (its own data tools use this).
AMOS_FIRST_MR_ID = 500

_CT_NAMES = {"ct"}
_MR_NAMES = {"mr", "mri"}


def _rescale_to_uint8(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip ``array`` to ``[lo, hi]`` and map that range linearly onto [0, 255] (uint8)."""
    if not hi > lo:
        # A constant volume carries no contrast; zeros avoid a division by zero.
        return np.zeros(array.shape, dtype=np.uint8)
    # float32 in place: a full CT in float64 would need 8 bytes per voxel for a uint8 result.
    # Its rounding error (~2e-5 at 255) cannot flip a rounding decision for integer HU, whose
    # scaled values are multiples of 0.6 and so never come closer than 0.1 to a .5 tie.
    scaled = np.array(array, dtype=np.float32, copy=True)
    np.clip(scaled, lo, hi, out=scaled)
    scaled -= np.float32(lo)
    scaled *= np.float32(255.0 / (hi - lo))
    np.rint(scaled, out=scaled)
    # The final clip only guards against float32 overshoot at the upper edge (255.00002).
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def normalize_intensity(array: np.ndarray, modality: str, name: Optional[str] = None) -> np.ndarray:
    """Normalise a volume (or slice) to uint8 in [0, 255].

    Args:
        array: intensities (HU for CT), any numeric dtype and shape.
        modality: ``"CT"``, or ``"MR"``/``"MRI"`` (case-insensitive).
        name: how to name the data in error messages (e.g. its file); default "array".

    Returns:
        uint8 array of the same shape. CT: ``round((clip(v, -175, 250) + 175) * 255 / 425)``.
        MR: the same with the volume's own 0.5/99.5 percentiles as window; a constant volume
        gives zeros.

    Raises:
        InputError: unknown modality, non-numeric, empty, or NaN/inf input.
    """
    label = name or "array"
    array = np.asarray(array)
    key = modality.strip().lower() if isinstance(modality, str) else None
    if key not in _CT_NAMES | _MR_NAMES:
        raise InputError(f"{label}: unknown modality {modality!r}; expected 'CT', 'MR' or 'MRI'")
    numeric = np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    if not numeric or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{label}: cannot normalise values of type {array.dtype}")
    if array.size == 0:
        raise InputError(f"{label}: cannot normalise an empty array (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(f"{label}: {bad} of {array.size} values are NaN or inf")
    if key in _CT_NAMES:
        return _rescale_to_uint8(array, *CT_WINDOW)
    lo, hi = np.percentile(array, MRI_PERCENTILES)
    return _rescale_to_uint8(array, float(lo), float(hi))


def modality_from_channel_name(name: str) -> str:
    """Modality of an nnU-Net ``dataset.json`` channel.

    nnU-Net v2 itself gives CT-specific normalisation only to the channel name ``"CT"``
    (case-insensitive here) and treats every other name ("MRI", "T1", "T2", "FLAIR", "ADC",
    "noNorm", "zscore", ...) as a generic intensity image. We follow it: ``"CT"`` -> ``"CT"``,
    anything else -> ``"MR"``, whose percentile normalisation suits any intensity scale.

    Raises:
        InputError: an empty or non-string name.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"dataset.json channel name {name!r} is empty or not a string")
    return "CT" if name.strip().lower() in _CT_NAMES else "MR"


def amos_modality(case_id: Union[str, int]) -> str:
    """Modality of an AMOS case from its id: below 500 CT, otherwise MR (AMOS's convention).

    Accepts an int (507), a numeric string ("0507") or a case or file name ("amos_0507",
    "amos_0507.nii.gz", "amos_0507_0000.nii.gz"): the first number in the name is the id.

    Raises:
        InputError: no case number can be found, or it is negative.
    """
    if isinstance(case_id, (bool, np.bool_)):
        raise InputError(f"AMOS case id {case_id!r} is not a number")
    if isinstance(case_id, (int, np.integer)):
        number = int(case_id)
    elif isinstance(case_id, str):
        # Only the file name matters; a digit in a folder name must not be taken for the id.
        match = re.search(r"\d+", Path(case_id).name)
        if match is None:
            raise InputError(f"AMOS case id {case_id!r} contains no case number (expected e.g. 'amos_0507')")
        number = int(match.group())
    else:
        raise InputError(f"AMOS case id {case_id!r} must be an int or a string")
    if number < 0:
        raise InputError(f"AMOS case id {case_id!r} is negative")
    return "CT" if number < AMOS_FIRST_MR_ID else "MR"
