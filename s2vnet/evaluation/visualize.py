"""Overlay PNGs of label volumes on their image: axial, coronal and sagittal planes side by side.

Volumes are in canonical (z, y, x) = (S, A, R) orientation; they are shown in the radiological
convention (patient's right on the viewer's left, anterior up on axial slices, superior up on
coronal and sagittal ones), with pixel aspect ratios from the spacing.
"""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from s2vnet.utils.atomic import atomic_path


def _palette(num_classes: int) -> np.ndarray:
    import matplotlib

    colours = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))[:, :3]
    return np.concatenate([np.zeros((1, 3)), np.resize(colours, (max(num_classes - 1, 1), 3))])


def default_cut(labels: np.ndarray) -> Tuple[int, int, int]:
    """The (z, y, x) where the planes cut: through the foreground's centre of mass (or the middle)."""
    foreground = np.argwhere(labels > 0)
    if len(foreground) == 0:
        return tuple(s // 2 for s in labels.shape)
    return tuple(int(round(v)) for v in foreground.mean(0))


def _planes(volume: np.ndarray, cut: Sequence[int]):
    z, y, x = cut
    return {
        "axial": volume[z][::-1, ::-1],  # rows: anterior at the top; columns: patient's right on the left
        "coronal": volume[:, y, :][::-1, ::-1],  # rows: superior at the top
        "sagittal": volume[:, :, x][::-1, ::-1],  # rows: superior at the top; columns: anterior on the left
    }


def render_overlays(
    image: np.ndarray,
    label_volumes: Dict[str, np.ndarray],
    spacing: Sequence[float],
    output_path: Path,
    cut: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    title: str = "",
) -> Path:
    """One row per label volume (e.g. ground truth, automatic, interactive), one column per plane.

    ``image`` is uint8 (z, y, x) (intensity-normalised); each label volume has the same shape.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    for name, labels in label_volumes.items():
        if labels.shape != image.shape:
            raise ValueError(f"label volume {name!r} has shape {labels.shape}, the image {image.shape}")
    num_classes = int(max([labels.max() for labels in label_volumes.values()] + [1])) + 1
    palette = _palette(max(num_classes, len(class_names or [])))
    if cut is None:
        cut = default_cut(next(iter(label_volumes.values())))
    sz, sy, sx = spacing
    aspects = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}
    rows = len(label_volumes)
    figure, axes = plt.subplots(rows, 3, figsize=(11, 3.6 * rows), dpi=100, squeeze=False)
    image_planes = _planes(image, cut)
    for row, (name, labels) in enumerate(label_volumes.items()):
        label_planes = _planes(labels, cut)
        for column, plane in enumerate(("axial", "coronal", "sagittal")):
            axis = axes[row, column]
            gray = image_planes[plane].astype(np.float32) / 255.0
            rgb = np.repeat(gray[..., None], 3, axis=-1)
            mask = label_planes[plane] > 0
            rgb[mask] = 0.45 * rgb[mask] + 0.55 * palette[label_planes[plane][mask]]
            axis.imshow(rgb, aspect=aspects[plane], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"{plane} ({'zyx'[('axial', 'coronal', 'sagittal').index(plane)]} = {cut[('axial', 'coronal', 'sagittal').index(plane)]})")
            if column == 0:
                axis.set_ylabel(name, fontsize=12)
    present = sorted({int(c) for labels in label_volumes.values() for c in np.unique(labels) if c > 0})
    if present:
        names = class_names or [str(i) for i in range(num_classes)]
        handles = [Patch(color=palette[c], label=names[c] if c < len(names) else str(c)) for c in present]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.05 if present else 0, 1, 1))
    output_path = Path(output_path)
    with atomic_path(output_path, suffix=".png") as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return output_path
