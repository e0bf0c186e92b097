"""Which slices form a training clip (§3.3: "randomly sample three slices from each volume").

Most slices of an abdominal scan hold few or none of the organs, so a uniform choice would spend
most of training on empty slices and rarely see small organs. The first slice of a clip (where
simulated clicks are placed and propagation starts) is therefore drawn:

* with probability ``foreground_ratio``, on a slice containing foreground: either a foreground
  class is drawn uniformly among those present in the volume and then one of its slices
  (``rare_class_balance``, so a gallbladder is started on as often as a liver), or a foreground
  slice is drawn uniformly;
* otherwise uniformly over all slices (the model must also learn that empty slices are empty and
  that centroids die when their organ ends).

The clip then runs ``num_slices`` slices at a random stride, up or down the volume.

A propagated centroid must also learn to let go when its organ ends (predict "no object"), but
clips started uniformly inside an organ rarely cross its end. So a share ``organ_end_ratio`` of
the foreground clips starts within the last slices of the chosen organ and runs outward, across
the organ's end.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np


def sample_clip(
    slice_classes: Sequence[Sequence[int]],
    rng: np.random.Generator,
    num_slices: int = 3,
    strides: Sequence[int] = (1,),
    random_direction: bool = True,
    foreground_ratio: float = 0.9,
    rare_class_balance: bool = True,
    organ_end_ratio: float = 0.0,
) -> List[int]:
    """Slice indices of one ordered clip.

    Args:
        slice_classes: per slice, the classes present (label 0 = background counts as no foreground).
        rng: the random generator (the data loader worker's).
    Returns:
        ``num_slices`` indices in clip order; all within the volume. Volumes shorter than the clip
        repeat their last slice rather than fail.
    """
    depth = len(slice_classes)
    if depth == 0:
        raise ValueError("cannot sample a clip from a volume with no slices")
    stride = int(rng.choice(list(strides)))
    # Shrink the stride for short volumes so that the clip still spans distinct slices.
    stride = max(1, min(stride, (depth - 1) // max(num_slices - 1, 1)))
    start, direction = _first_slice(slice_classes, rng, foreground_ratio, rare_class_balance, organ_end_ratio, num_slices, stride)
    if direction is None:
        direction = int(rng.choice([-1, 1])) if random_direction else 1
    span = (num_slices - 1) * stride
    if not 0 <= start + direction * span < depth:
        direction = -direction  # run the other way rather than off the volume
    indices = start + direction * stride * np.arange(num_slices)
    return np.clip(indices, 0, depth - 1).astype(int).tolist()


def _first_slice(
    slice_classes, rng: np.random.Generator, foreground_ratio: float, rare_class_balance: bool,
    organ_end_ratio: float, num_slices: int, stride: int,
) -> Tuple[int, Optional[int]]:
    """The clip's first slice, and its direction when the clip must cross an organ's end."""
    depth = len(slice_classes)
    if rng.random() >= foreground_ratio:
        return int(rng.integers(depth)), None
    slices_of_class = {}
    for z, classes in enumerate(slice_classes):
        for c in classes:
            if c != 0:
                slices_of_class.setdefault(int(c), []).append(z)
    if not slices_of_class:  # an empty volume (or unlabelled): uniform
        return int(rng.integers(depth)), None
    classes = sorted(slices_of_class)
    cross_end = rng.random() < organ_end_ratio
    if rare_class_balance or cross_end:  # crossing an end needs one organ's extent
        chosen = classes[int(rng.integers(len(classes)))]
        candidates = slices_of_class[chosen]
    else:
        candidates = sorted({z for zs in slices_of_class.values() for z in zs})
    if cross_end:
        # Start 0..T-2 strides inside one end of the organ and run outward across that end.
        inside = int(rng.integers(max(num_slices - 1, 1))) * stride
        if rng.random() < 0.5:
            return min(candidates[-1], max(candidates[-1] - inside, candidates[0])), 1
        return max(candidates[0], min(candidates[0] + inside, candidates[-1])), -1
    return int(candidates[int(rng.integers(len(candidates)))]), None
