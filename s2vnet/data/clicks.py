"""Click simulation shared by training and evaluation (docs/evaluation.md, "Interactive protocol").

A simulated user clicks where a human would: well inside an object, on the slice where it looks
biggest. Concretely, every click goes to the *deepest point* of a region: the axial slice with the
largest cross-section, and within it the pixel farthest (in mm, with the in-plane spacing) from the
region's boundary.

- :func:`initial_clicks`: one positive click per present class, at the deepest point of the class's
  largest 3D connected component.
- :func:`corrective_clicks`: one click per class with errors, at the deepest point of its largest
  error component (false negative or false positive). The click carries the *true* label at that
  voxel, so a false negative gives a positive click and a false positive gives a negative click
  (label 0) or a click for the organ that is really there.

Arrays are (Z, Y, X); 2D (H, W) input is treated as (1, H, W) and yields ``z = 0``. Label volumes
hold 0 = background (a real class) and 1..K organs; an optional ``ignore_label`` marks voxels that
are never clicked and never count as errors.

Speed: the whole volume is scanned only a few times per call (validation and one
:func:`scipy.ndimage.find_objects` pass per label volume); connected-component labelling and
distance transforms run on bounding boxes of the classes and regions involved.
"""
from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from s2vnet.utils.arrays import check_class_ids, check_spacing, class_boxes, mask_box, union_box
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Click", "deepest_point", "inplane_depth", "initial_clicks", "corrective_clicks"]

# Face connectivity (6-neighbourhood in 3D, 4 in 2D), scipy's default: regions that touch only at
# an edge or corner are different regions. With thick axial slices, diagonal neighbours across
# slices are far apart physically, so merging them would overstate a region's size.
_STRUCTURE_3D = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class Click:
    """One click of a (simulated or real) user.

    Attributes:
        z, y, x: voxel indices in the (Z, Y, X) array (``z = 0`` for 2D images).
        label: the class the user says this voxel belongs to; 0 = background, i.e. a negative click.
    """

    z: int
    y: int
    x: int
    label: int

    def __post_init__(self) -> None:
        # Clicks also come from users and other modules; normalising numpy integers to ``int``
        # keeps clicks hashable consistently and JSON-serialisable.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
                raise InputError(f"Click.{f.name}={value!r}: must be an integer")
            if value < 0:
                raise InputError(f"Click.{f.name}={value!r}: must be non-negative")
            object.__setattr__(self, f.name, int(value))

    @property
    def is_positive(self) -> bool:
        """True for a click on a foreground class, False for a negative (background) click."""
        return self.label != 0


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _as_3d(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as (Z, Y, X), turning (H, W) into a (1, H, W) view."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"{name}: expected a numpy array, got {type(array).__name__}")
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        return array
    raise InputError(f"{name} with shape {array.shape}: expected a 2D (H, W) or 3D (Z, Y, X) array")


def _check_labels(array: np.ndarray, name: str) -> np.ndarray:
    """Validate a label array (integer, non-negative, 2D or 3D) and return it as (Z, Y, X)."""
    volume = _as_3d(array, name)
    if not (np.issubdtype(volume.dtype, np.integer) or volume.dtype == np.bool_):
        raise InputError(f"{name} has dtype {volume.dtype}: label arrays must have an integer dtype")
    if volume.size == 0:
        raise InputError(f"{name} with shape {array.shape} is empty")
    if np.issubdtype(volume.dtype, np.signedinteger):
        minimum = int(volume.min())
        if minimum < 0:
            raise InputError(f"{name} contains the negative label {minimum}: labels must be >= 0")
    return volume


def _check_label_pair(gt_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate ground-truth and predicted labels of one shape; return both as (Z, Y, X)."""
    gt = _check_labels(gt_labels, "gt_labels")
    pred = _check_labels(pred_labels, "pred_labels")
    if gt_labels.shape != pred_labels.shape:
        raise InputError(
            f"gt_labels has shape {gt_labels.shape} but pred_labels has shape {pred_labels.shape}: they must match"
        )
    return gt, pred


def _inplane_spacing(spacing: Optional[Sequence[float]], ndim: int) -> tuple[float, float]:
    """Validate ``spacing`` (one value per input axis, :func:`check_spacing`) and return the
    in-plane (y, x) spacing; None = isotropic."""
    if spacing is None:
        return (1.0, 1.0)
    values = check_spacing(spacing, ndim)
    return (float(values[-2]), float(values[-1]))


def _check_jitter(rng: Optional[np.random.Generator], jitter_fraction: float) -> float:
    try:
        fraction = float(jitter_fraction)
    except (TypeError, ValueError):
        raise InputError(f"jitter_fraction={jitter_fraction!r}: must be a number in [0, 1)") from None
    if not 0.0 <= fraction < 1.0:  # also rejects NaN
        raise InputError(f"jitter_fraction={jitter_fraction!r}: must be in [0, 1)")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise InputError(f"rng={rng!r}: must be a numpy.random.Generator or None")
    if fraction > 0 and rng is None:
        # Jitter without a generator would silently be ignored; a config asking for augmentation
        # must get it or fail loudly.
        raise InputError(f"jitter_fraction={jitter_fraction!r} needs an rng (numpy.random.Generator)")
    return fraction


def _click_class_ids(class_ids: Sequence[int], ignore_label: Optional[int]) -> list[int]:
    """Validate class ids (:func:`check_class_ids`: no duplicates) and the ignore label; return the ids sorted."""
    ids = check_class_ids(class_ids)
    if ignore_label is not None:
        if isinstance(ignore_label, (bool, np.bool_)) or not isinstance(ignore_label, numbers.Integral):
            raise InputError(f"ignore_label={ignore_label!r}: must be an integer or None")
        if ignore_label in ids:
            raise InputError(f"ignore_label={ignore_label} is also in class_ids={ids!r}; it cannot be clicked")
    return sorted(ids)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected components of ``mask``: (label array, voxel count per label, index 0 unused)."""
    labelled, n = ndimage.label(mask, structure=_STRUCTURE_3D)
    counts = np.bincount(labelled.ravel(), minlength=n + 1)
    counts[0] = 0  # the non-region voxels are never a candidate
    return labelled, counts


def _central_maximum(depth: np.ndarray, max_depth: float) -> int:
    """Flat index of the deepest pixel; among equally deep pixels (the ridge of an elongated shape),
    the one nearest the ridge's centre, where a user would click (then the first in C order)."""
    ties = np.flatnonzero(depth == max_depth)
    if ties.size == 1:
        return int(ties[0])
    rows, cols = np.unravel_index(ties, depth.shape)
    distance = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    return int(ties[np.argmin(distance)])


def inplane_depth(section: np.ndarray, inplane_spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Depth of every pixel of a boolean (H, W) ``section``: its Euclidean distance, with the
    in-plane spacing, to the nearest pixel outside the region (0 outside). Pixels beyond the
    array's border count as outside, so the depths of a crop equal those on the full plane as long
    as the crop holds the whole region."""
    # A one-pixel False margin makes the array's border count as outside the region.
    padded = np.pad(section, 1, mode="constant", constant_values=False)
    return ndimage.distance_transform_edt(padded, sampling=inplane_spacing)[1:-1, 1:-1]


def _deepest_in_region(
    region: np.ndarray,
    inplane_spacing: tuple[float, float],
    rng: Optional[np.random.Generator],
    jitter_fraction: float,
) -> tuple[int, int, int]:
    """Core of :func:`deepest_point` on an already validated, non-empty boolean (Z, Y, X) region."""
    areas = region.sum(axis=(1, 2))
    z = int(np.argmax(areas))  # argmax returns the first maximum: the deterministic tie-break
    section = region[z]
    ys, xs = mask_box(section)
    depth = inplane_depth(section[ys, xs], inplane_spacing)  # the bounding box holds the whole region
    max_depth = float(depth.max())
    if rng is not None and jitter_fraction > 0:
        # max_depth > 0 and jitter_fraction < 1, so the threshold is > 0 and every candidate is
        # inside the region.
        candidates = np.flatnonzero(depth >= (1.0 - jitter_fraction) * max_depth)
        flat = int(candidates[rng.integers(candidates.size)])
    else:
        flat = _central_maximum(depth, max_depth)
    cy, cx = np.unravel_index(flat, depth.shape)
    return z, int(cy) + ys.start, int(cx) + xs.start


def _component_click(
    labelled: np.ndarray,
    index: int,
    offset: Sequence[int],
    inplane_spacing: tuple[float, float],
    rng: Optional[np.random.Generator],
    jitter_fraction: float,
) -> tuple[int, int, int]:
    """Deepest point of component ``index`` of ``labelled``, a crop starting at ``offset`` in the volume."""
    box = ndimage.find_objects(labelled, max_label=index)[index - 1]
    component = labelled[box] == index
    z, y, x = _deepest_in_region(component, inplane_spacing, rng, jitter_fraction)
    return (
        z + box[0].start + offset[0],
        y + box[1].start + offset[1],
        x + box[2].start + offset[2],
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def deepest_point(
    region: np.ndarray,
    spacing: Optional[Sequence[float]] = None,
    rng: Optional[np.random.Generator] = None,
    jitter_fraction: float = 0.0,
) -> tuple[int, int, int]:
    """Deepest interior point of a region, where a user would click it.

    The axial slice ``z`` with the largest cross-section is chosen (first one on ties); within it,
    the pixel with the largest in-plane Euclidean distance to the region's boundary, measured with
    the in-plane spacing (pixels outside the array count as outside the region). Among equally deep
    pixels, the one nearest their centre wins (then the first in C order), so a rectangle is
    clicked in its middle, not at one end of its ridge.

    Args:
        region: boolean array, (Z, Y, X) or (H, W) (treated as (1, H, W)); must not be empty.
        spacing: voxel size per axis of ``region`` (3 values for 3D, 2 for 2D), e.g. in mm;
            only the in-plane (y, x) part matters. None = isotropic.
        rng: random generator for training-time jitter.
        jitter_fraction: in [0, 1). With ``rng`` and a positive value, the pixel is drawn
            uniformly among the pixels of the chosen slice whose depth is at least
            ``(1 - jitter_fraction) * max depth``.

    Returns:
        ``(z, y, x)`` indices into the (Z, Y, X) view of ``region`` (``z = 0`` for 2D).

    Raises:
        InputError: not a boolean 2D/3D array, empty region, bad spacing or jitter.
    """
    volume = _as_3d(region, "region")
    if volume.dtype != np.bool_:
        raise InputError(f"region has dtype {volume.dtype}: expected a boolean mask")
    inplane = _inplane_spacing(spacing, region.ndim)
    fraction = _check_jitter(rng, jitter_fraction)
    if not volume.any():
        raise InputError(f"region with shape {region.shape} is empty: there is no point to click")
    return _deepest_in_region(volume, inplane, rng, fraction)


def initial_clicks(
    gt_labels: np.ndarray,
    class_ids: Sequence[int],
    spacing: Optional[Sequence[float]] = None,
    rng: Optional[np.random.Generator] = None,
    jitter_fraction: float = 0.0,
    ignore_label: Optional[int] = None,
) -> list[Click]:
    """First round: one positive click per class of ``class_ids`` present in ``gt_labels``.

    The click lies at the :func:`deepest_point` of the class's largest face-connected 3D component
    (its largest cross-section, deepest pixel there). Absent classes get no click.

    Args:
        gt_labels: integer label array, (Z, Y, X) or (H, W).
        class_ids: non-negative class ids to click, each once (0 = background is allowed).
        spacing, rng, jitter_fraction: as in :func:`deepest_point`.
        ignore_label: label of voxels never to click; must not be in ``class_ids``.

    Returns:
        Clicks sorted by class id, each with ``label`` = its class.
    """
    gt = _check_labels(gt_labels, "gt_labels")
    inplane = _inplane_spacing(spacing, gt_labels.ndim)
    fraction = _check_jitter(rng, jitter_fraction)
    ids = _click_class_ids(class_ids, ignore_label)

    clicks: list[Click] = []
    for c, box in class_boxes(gt, ids).items():
        if box is None:
            continue
        labelled, counts = _components(gt[box] == c)
        largest = int(np.argmax(counts))  # first found on ties
        offset = [s.start for s in box]
        z, y, x = _component_click(labelled, largest, offset, inplane, rng, fraction)
        clicks.append(Click(z, y, x, c))
    clicks.sort(key=lambda k: k.label)
    logger.debug("initial clicks: %s", clicks)
    return clicks


def corrective_clicks(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    class_ids: Sequence[int],
    *,
    spacing: Optional[Sequence[float]] = None,
    rng: Optional[np.random.Generator] = None,
    jitter_fraction: float = 0.0,
    ignore_label: Optional[int] = None,
) -> list[Click]:
    """Next round: one click per class of ``class_ids`` whose prediction has any error.

    For class ``c``, false negatives are ``(gt == c) & (pred != c)`` and false positives
    ``(pred == c) & (gt != c)``, both without ignore voxels. The largest face-connected component
    among all FN and FP components of ``c`` (by voxel count; ties: FN before FP, then first found)
    is clicked at its :func:`deepest_point`. The click's label is the true label there: ``c`` on a
    false negative (positive click); on a false positive the ground truth, i.e. 0 (a negative click)
    or the organ that is really there.

    Args:
        gt_labels: integer ground-truth labels, (Z, Y, X) or (H, W).
        pred_labels: integer predicted labels of the same shape.
        class_ids, spacing, rng, jitter_fraction, ignore_label: as in :func:`initial_clicks`; the
            options are keyword-only (after two label arrays and a class list, a positional
            spacing is easily put in the wrong place).

    Returns:
        Clicks sorted by class id of the erroneous class (one per class with errors).
    """
    gt, pred = _check_label_pair(gt_labels, pred_labels)
    inplane = _inplane_spacing(spacing, gt_labels.ndim)
    fraction = _check_jitter(rng, jitter_fraction)
    ids = _click_class_ids(class_ids, ignore_label)

    gt_boxes = class_boxes(gt, ids)
    pred_boxes = class_boxes(pred, ids)
    clicks: list[Click] = []
    for c in ids:
        # Every error voxel of c is in gt == c or pred == c, so the union of both boxes holds them all.
        box = union_box(gt_boxes[c], pred_boxes[c])
        if box is None:
            continue
        gt_crop, pred_crop = gt[box], pred[box]
        is_gt, is_pred = gt_crop == c, pred_crop == c
        fn = is_gt & ~is_pred
        fp = is_pred & ~is_gt
        if ignore_label is not None:
            fp &= gt_crop != ignore_label  # fn needs no mask: gt == c excludes the ignore label
        best: Optional[tuple[np.ndarray, int]] = None
        best_size = 0
        # FN first, and a strict ">" keeps the earlier candidate on ties.
        for errors in (fn, fp):
            if not errors.any():
                continue
            labelled, counts = _components(errors)
            k = int(np.argmax(counts))
            if counts[k] > best_size:
                best, best_size = (labelled, k), int(counts[k])
        if best is None:
            continue
        offset = [s.start for s in box]
        z, y, x = _component_click(best[0], best[1], offset, inplane, rng, fraction)
        clicks.append(Click(z, y, x, int(gt[z, y, x])))
    logger.debug("corrective clicks: %s", clicks)
    return clicks
