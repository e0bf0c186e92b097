"""Synthetic CT-like abdominal phantoms for tests and the CPU demo (DESIGN §4, "Phantoms").

A phantom is a small contrast-enhanced abdominal CT, drawn from geometric primitives in physical
millimetres and then sampled on a voxel grid:

* body: elliptical outline with a flat back, subcutaneous fat, an abdominal-wall muscle layer,
  ribs in the upper part, spine (vertebral bodies with cortex and discs, canal, posterior
  elements), paraspinal and psoas muscles, iliac wings at the bottom, a scanner table;
* unlabelled distractors: lung bases and the heart at the top, inferior vena cava, renal veins,
  iliac vessels, duodenum, colon and small-bowel loops with fluid, gas and faeces;
* labelled organs (:data:`CLASS_NAMES`): liver (with enhancing intrahepatic vessels), spleen,
  kidneys (cortex and medulla), stomach (wall, fluid, gas), gallbladder, pancreas, aorta.

Organs are deformed ellipsoids (random low-frequency perturbation of the boundary) or tubes
along jittered polylines, with size, position and orientation jittered per case. Their
cranio-caudal positions follow real anatomy (liver dome near the top, kidneys in the middle,
aortic bifurcation low), so each organ appears, grows and vanishes along z and the first and
last slices hold (almost) no organ. Intensities of several organs overlap on purpose (liver,
spleen, pancreas, bowel wall and muscle all lie at 40-65 HU; kidney cortex, aorta, IVC and
hepatic vessels at 100-180 HU), so segmentation needs shape and context, not a threshold.
The image then gets partial-volume blur, a smooth gain/offset (bias) field and Gaussian noise.

Geometry: arrays are ``(z, y, x)`` in the RAS convention of :mod:`s2vnet.data.volume_io`:
``x`` increases towards the patient's right, ``y`` towards anterior, ``z`` towards superior,
so the liver is at large ``x``, the spine at small ``y`` and the liver dome at large ``z``.
Written with a diagonal affine ``diag(sx, sy, sz)`` (after transposing to ``(x, y, z)``), the
NIfTI files are proper RAS volumes that any viewer shows the right way round.

Spacing follows from the anatomy, which has a fixed physical size whatever the array shape:
the slice covers the whole body (field of view about 320-510 mm, body width 290-370 mm plus
a 6-30 % margin, square pixels) and the ``nz`` slices cover the scan range from the lung bases
to below the aortic bifurcation (about 255-355 mm). So a (64, 128, 128) case has 2.5-4.0 mm
pixels and 4.0-5.5 mm slices, (64, 256, 256) 1.25-2.0 mm pixels, (128, 512, 512) about 0.75 mm
pixels and 2.5 mm slices (real CT), and (32, 64, 64) 5-8 mm pixels and 8-11 mm slices.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import nibabel as nib
import numpy as np
from scipy import ndimage

from s2vnet.utils.atomic import atomic_path, write_json_atomic
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Bumped whenever the same seed would produce different volumes; stored in dataset.json so
#: that resuming an old folder with a new generator is refused instead of mixing cases.
GENERATOR_VERSION = 2  # 2: test cases are named phantom_test_NNN

#: Label names; the index is the label id.
CLASS_NAMES: tuple[str, ...] = (
    "background",
    "liver",
    "spleen",
    "kidney",
    "stomach",
    "gallbladder",
    "pancreas",
    "aorta",
)
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

#: Tissue intensities: (mean HU, case-to-case standard deviation). Each case draws its own
#: value per tissue, like contrast timing and patients differ between real scans.
TISSUE_HU: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "lung": (-850.0, 30.0),
    "fat": (-100.0, 8.0),
    "muscle": (45.0, 4.0),
    "liver": (60.0, 6.0),
    "liver_vessel": (150.0, 15.0),
    "spleen": (50.0, 6.0),
    "kidney_cortex": (150.0, 12.0),
    "kidney_medulla": (95.0, 10.0),
    "aorta": (180.0, 15.0),
    "vein": (120.0, 15.0),
    "pancreas": (45.0, 6.0),
    "bile": (10.0, 4.0),
    "gallbladder_wall": (35.0, 5.0),
    "gut_wall": (42.0, 5.0),
    "fluid": (12.0, 5.0),
    "gas": (-900.0, 30.0),
    "faeces": (-60.0, 30.0),
    "heart": (100.0, 15.0),
    "bone_cortex": (700.0, 60.0),
    "bone_marrow": (230.0, 30.0),
    "rib": (450.0, 50.0),
    "disc": (80.0, 10.0),
    "csf": (15.0, 5.0),
    "table": (150.0, 20.0),
}

DEFAULT_SHAPE: tuple[int, int, int] = (64, 128, 128)
#: Smallest accepted array; below (32, 64, 64) the smallest organs are only a few voxels wide.
MIN_SHAPE: tuple[int, int, int] = (8, 32, 32)

# Reference adult whose anatomy the millimetre constants below describe: body half-width
# and half-depth (mm). A case scales positions and sizes by its own body size.
_REF_HALF_WIDTH = 165.0
_REF_HALF_DEPTH = 120.0

_SPLITS = {"train": ("imagesTr", "labelsTr", 0), "test": ("imagesTs", "labelsTs", 1)}
_CASE_PREFIX = "phantom"


@dataclass
class Phantom:
    """One synthetic CT volume with its labels.

    Attributes:
        image: ``int16`` HU, axes ``(z, y, x)`` in RAS order (``image[z]`` is an axial slice,
            ``z`` inferior -> superior, ``y`` posterior -> anterior, ``x`` left -> right).
        labels: ``uint8`` label ids (index into ``class_names``), same shape.
        spacing: voxel size in mm, ``(z, y, x)``.
        class_names: label names, index = label id, ``class_names[0] == "background"``.
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))

    def affine(self) -> np.ndarray:
        """RAS voxel -> world matrix for the ``(x, y, z)``-transposed arrays (nibabel order)."""
        return phantom_affine(self.spacing, self.image.shape)


def phantom_affine(spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """Diagonal RAS affine ``diag(sx, sy, sz, 1)`` for a ``(z, y, x)`` spacing and shape.

    The origin puts the centre of the volume at world (0, 0, 0). Indices are ``(x, y, z)``,
    i.e. the affine belongs to ``array.transpose(2, 1, 0)``.
    """
    sz, sy, sx = (float(s) for s in spacing)
    nz, ny, nx = (int(n) for n in shape)
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz]
    return affine


# ---------------------------------------------------------------------------------------------
# Geometric primitives
# ---------------------------------------------------------------------------------------------

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def _rotation(axial: float, coronal: float, sagittal: float) -> np.ndarray:
    """3x3 matrix whose columns are the local (z, y, x) axes in world (z, y, x) coordinates.

    Angles in degrees: ``axial`` turns in the y-x plane, ``coronal`` in the z-x plane,
    ``sagittal`` in the z-y plane.
    """
    a, c, s = np.deg2rad([axial, coronal, sagittal])
    r_axial = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    r_coronal = np.array([[math.cos(c), 0, -math.sin(c)], [0, 1, 0], [math.sin(c), 0, math.cos(c)]])
    r_sagittal = np.array([[math.cos(s), -math.sin(s), 0], [math.sin(s), math.cos(s), 0], [0, 0, 1]])
    return r_axial @ r_coronal @ r_sagittal


@dataclass
class _Ellipsoid:
    """Ellipsoid with a low-frequency perturbed boundary, in world millimetres ``(z, y, x)``.

    ``level`` is negative inside: ``|q| - 1 - sum_k a_k cos(w_k . q + phi_k)`` with ``q`` the
    point in the ellipsoid's normalised frame (unit sphere), so the boundary wobbles smoothly by
    up to ``sum(amps)`` of the radius.
    """

    centre: np.ndarray
    radii: np.ndarray
    axes: np.ndarray
    waves: np.ndarray
    phases: np.ndarray
    amps: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt(((self.axes * self.radii[None, :]) ** 2).sum(axis=1)) * (1.0 + self.amps.sum())
        return self.centre - half, self.centre + half

    def local(self, coords: Coords) -> Coords:
        """Normalised local coordinates of the (broadcastable) world grid ``coords``."""
        d = [coords[i] - float(self.centre[i]) for i in range(3)]
        return tuple(
            (float(self.axes[0, j]) * d[0] + float(self.axes[1, j]) * d[1] + float(self.axes[2, j]) * d[2])
            / float(self.radii[j])
            for j in range(3)
        )

    def level(self, coords: Coords, q: Optional[Coords] = None) -> np.ndarray:
        q = self.local(coords) if q is None else q
        out = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2]) - 1.0
        for w, phase, amp in zip(self.waves, self.phases, self.amps):
            out -= float(amp) * np.cos(float(w[0]) * q[0] + float(w[1]) * q[1] + float(w[2]) * q[2] + float(phase))
        return out


@dataclass
class _Tube:
    """Tube of varying radius along a polyline (world mm). ``level`` is a signed mm distance."""

    points: np.ndarray  # (n, 3)
    radii: np.ndarray  # (n,)
    wobble: float = 0.0  # relative radius modulation (lobulated surfaces)
    wave: np.ndarray = field(default_factory=lambda: np.zeros(3))  # rad/mm, world frame
    phase: float = 0.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = (self.radii + self.wobble * self.radii.mean())[:, None]
        return (self.points - r).min(axis=0), (self.points + r).max(axis=0)

    def level(self, coords: Coords) -> np.ndarray:
        out: Optional[np.ndarray] = None
        for i in range(len(self.points) - 1):
            a, b = self.points[i], self.points[i + 1]
            ab = b - a
            length2 = float(ab @ ab) or 1e-6
            d = [coords[k] - float(a[k]) for k in range(3)]
            t = (d[0] * float(ab[0]) + d[1] * float(ab[1]) + d[2] * float(ab[2])) / length2
            np.clip(t, 0.0, 1.0, out=t)
            dist2 = sum((d[k] - t * float(ab[k])) ** 2 for k in range(3))
            radius = float(self.radii[i]) + t * float(self.radii[i + 1] - self.radii[i])
            seg = np.sqrt(dist2) - radius
            out = seg if out is None else np.minimum(out, seg)
        assert out is not None
        if self.wobble:
            w = self.wave
            mod = np.cos(float(w[0]) * coords[0] + float(w[1]) * coords[1] + float(w[2]) * coords[2] + self.phase)
            # Radius-relative modulation, approximated with the mean radius: cheap and smooth.
            out = out - float(self.wobble * self.radii.mean()) * mod
        return out


def _smooth_union(a: np.ndarray, b: np.ndarray, k: float = 0.15) -> np.ndarray:
    """Union of two level sets with a rounded seam (polynomial smooth minimum)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


class _Builder:
    """Draws one phantom. Every random draw goes through ``self.rng`` in a fixed order."""

    def __init__(self, seed: int, shape: tuple[int, int, int]) -> None:
        self.rng = np.random.default_rng(seed)
        self.shape = shape
        rng = self.rng
        # Truncated at 2 SD so that no case gets an implausible tissue (e.g. fat above water).
        self.hu_of = {name: m + s * float(np.clip(rng.normal(), -2.0, 2.0)) for name, (m, s) in TISSUE_HU.items()}

        # Body habitus: half-width/half-depth at the reference level, cranio-caudal scale.
        self.W = float(rng.uniform(145.0, 185.0))
        self.D = self.W * float(rng.uniform(0.62, 0.76))
        self.sx = self.W / _REF_HALF_WIDTH
        self.sy = self.D / _REF_HALF_DEPTH
        self.sz = float(rng.uniform(0.92, 1.08)) * self.sx**0.3

        # Scan range in "anatomical depth" a (mm below the liver dome, growing downwards):
        # starts in the lung bases, ends below the aortic bifurcation in the upper pelvis.
        self.a_top = -float(rng.uniform(15.0, 35.0)) * self.sz
        a_bottom = float(rng.uniform(260.0, 300.0)) * self.sz
        nz, ny, nx = shape
        self.dz = round((a_bottom - self.a_top) / nz, 4)
        # a of slice k (k = 0 is the most inferior slice, RAS)
        self.a_k = (self.a_top + (nz - 1 - np.arange(nz)) * self.dz).astype(np.float32)

        # Outline of the body along z: a little wider in the lower thorax and the pelvis.
        t = self.a_k / (300.0 * self.sz) - 0.5
        w1, w2 = rng.uniform(-0.08, 0.03), rng.uniform(0.0, 0.15)
        belly = rng.uniform(0.0, 0.08)
        self.W_k = (self.W * (1.0 + w1 * t + w2 * t * t)).astype(np.float32)
        self.D_k = (self.D * (1.0 + 0.5 * w2 * t * t + belly * np.exp(-(((t - 0.2) / 0.25) ** 2)))).astype(np.float32)
        # Boundary harmonics: anterior bulge, squareness, slight asymmetry; then a flat back.
        self.e = rng.uniform([-0.03, -0.05, -0.02], [0.05, 0.05, 0.02])
        self.back = float(rng.uniform(0.88, 0.96))
        self.fat = float(rng.uniform(0.05, 0.13))
        self.muscle = float(rng.uniform(0.05, 0.08))

        # Field of view: square pixels; the widest body extent fills 77-94 % of it. Extents
        # come from the outline's harmonics sampled around the circle.
        theta = np.linspace(0.0, 2.0 * math.pi, 720, endpoint=False)
        b = 1.0 + self.e[0] * np.sin(theta) + self.e[1] * np.cos(2 * theta) + self.e[2] * np.sin(2 * theta)
        half_x = float(self.W_k.max()) * float(np.abs(b * np.cos(theta)).max())
        top_y = float(self.D_k.max()) * float((b * np.sin(theta)).max())
        bottom_y = min(self.back, float((-b * np.sin(theta)).max())) * float(self.D_k.max()) + 12.0  # + table
        margin = float(rng.uniform(1.06, 1.3))
        self.ds = round(max(2.0 * half_x * margin / nx, (top_y + bottom_y) * margin / ny), 4)
        room_x = nx * self.ds - 2.0 * half_x
        room_y = ny * self.ds - (top_y + bottom_y)
        cx = half_x + room_x * float(rng.uniform(0.1, 0.9))
        cy = bottom_y + room_y * float(rng.uniform(0.1, 0.9))
        # World coordinates (mm) of voxel centres; y and x relative to the body centre.
        self.z = ((np.arange(nz) - (nz - 1) / 2.0) * self.dz).astype(np.float32)
        self.y = ((np.arange(ny) + 0.5) * self.ds - cy).astype(np.float32)
        self.x = ((np.arange(nx) + 0.5) * self.ds - cx).astype(np.float32)
        self.table_gap = float(rng.uniform(2.0, 8.0))

        self.hu = np.full(shape, TISSUE_HU["air"][0], dtype=np.float32)
        self.lab = np.zeros(shape, dtype=np.uint8)

    # -- coordinates -------------------------------------------------------------------------

    def z_of(self, a: float) -> float:
        """World z (mm, superior positive) of anatomical depth ``a``."""
        return float(self.z[-1]) - (a - self.a_top)

    def point(self, u: float, v: float, a: float) -> np.ndarray:
        """World (z, y, x) of a reference-anatomy point: u, v relative to body half-axes, a in mm."""
        return np.array([self.z_of(a * self.sz), v * self.D, u * self.W])

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Optional[tuple[tuple[slice, ...], Coords]]:
        """Voxel slices covering the world box [lo, hi] and the broadcastable coordinates there."""
        slices = []
        for axis_coords, step, l, h in zip((self.z, self.y, self.x), (self.dz, self.ds, self.ds), lo, hi):
            start = int(math.ceil((l - float(axis_coords[0])) / step))
            stop = int(math.floor((h - float(axis_coords[0])) / step)) + 1
            start, stop = max(start, 0), min(stop, len(axis_coords))
            if start >= stop:
                return None
            slices.append(slice(start, stop))
        sl = tuple(slices)
        coords = (self.z[sl[0]][:, None, None], self.y[sl[1]][None, :, None], self.x[sl[2]][None, None, :])
        return sl, coords

    def ellipsoid(
        self,
        u: float,
        v: float,
        a: float,
        radii: Sequence[float],
        angles: Sequence[float] = (0.0, 0.0, 0.0),
        pos_jitter: Sequence[float] = (0.04, 0.04, 8.0),
        size_jitter: float = 0.12,
        angle_jitter: float = 8.0,
        perturbation: float = 0.10,
    ) -> _Ellipsoid:
        """A jittered, perturbed ellipsoid of the reference anatomy.

        ``radii`` are (z, y, x) mm for the reference adult, scaled by this case's habitus;
        ``angles`` (axial, coronal, sagittal) in degrees; ``pos_jitter`` is (du, dv, da mm).
        """
        rng = self.rng
        du, dv, da = (float(rng.uniform(-j, j)) for j in pos_jitter)
        centre = self.point(u + du, v + dv, a + da)
        scale = np.array([self.sz, self.sy, self.sx]) * float(rng.uniform(1 - size_jitter, 1 + size_jitter))
        r = np.asarray(radii, float) * scale * rng.uniform(0.95, 1.05, 3)
        axes = _rotation(*(np.asarray(angles, float) + rng.uniform(-angle_jitter, angle_jitter, 3)))
        n_waves = 3
        directions = rng.normal(size=(n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        waves = directions * rng.uniform(1.5, 3.2, (n_waves, 1))
        phases = rng.uniform(0.0, 2 * math.pi, n_waves)
        weights = rng.uniform(0.5, 1.0, n_waves)
        amps = weights / weights.sum() * perturbation * float(rng.uniform(0.7, 1.0))
        return _Ellipsoid(centre, r, axes, waves, phases, amps)

    def tube(
        self,
        uva: Sequence[Sequence[float]],
        radii: Sequence[float],
        jitter: float = 6.0,
        wobble: float = 0.0,
    ) -> _Tube:
        """A tube through reference-anatomy points ``(u, v, a)``, each jittered by ``jitter`` mm."""
        rng = self.rng
        pts = np.array([self.point(u, v, a) for u, v, a in uva])
        pts += rng.uniform(-jitter, jitter, pts.shape)
        scale = (self.sx * self.sy) ** 0.5 * float(rng.uniform(0.85, 1.15))
        r = np.asarray(radii, float) * scale
        direction = rng.normal(size=3)
        wave = direction / np.linalg.norm(direction) * 2 * math.pi / float(rng.uniform(18.0, 30.0))
        return _Tube(pts, r, wobble, wave, float(rng.uniform(0, 2 * math.pi)))

    def region(self, *shapes: Union[_Ellipsoid, _Tube]) -> Optional[tuple[tuple[slice, ...], Coords]]:
        los, his = zip(*(s.bounds() for s in shapes))
        return self.box(np.min(los, axis=0), np.max(his, axis=0))

    # -- painting ----------------------------------------------------------------------------

    def paint(
        self,
        sl: tuple[slice, ...],
        mask: np.ndarray,
        hu: Union[float, np.ndarray],
        label: Optional[int] = None,
    ) -> None:
        """Set HU (scalar or bbox-shaped array) and optionally the label where ``mask`` holds.

        ``label=None`` leaves labels alone, ``0`` clears them (unlabelled tissue drawn on top),
        a class id claims the voxels: later structures overwrite earlier ones, so labels never
        overlap.
        """
        view = self.hu[sl]
        mask = np.broadcast_to(mask, view.shape)  # masks that ignore z arrive as (1, m, l)
        if isinstance(hu, np.ndarray):
            view[mask] = np.broadcast_to(hu, mask.shape)[mask]
        else:
            view[mask] = hu
        if label is not None:
            self.lab[sl][mask] = label

    def mottled(self, mask: np.ndarray, mean: float, sd: float) -> np.ndarray:
        """Per-voxel random texture (lung parenchyma, pancreatic lobules); only ``mask`` voxels vary."""
        out = np.full(mask.shape, mean, dtype=np.float32)
        out[mask] += self.rng.normal(0.0, sd, int(mask.sum())).astype(np.float32)
        return out

    # -- anatomy -----------------------------------------------------------------------------

    def build(self) -> Phantom:
        self._body()
        self._thorax()
        self._gut()
        self._liver()
        self._veins()
        self._gallbladder()
        self._stomach()
        self._spleen()
        self._pancreas()
        self._kidneys()
        self._arteries()
        self._skeleton()
        # Labels live in the abdominal cavity only; everything drawn there already respects
        # that, this makes the guarantee independent of drawing order.
        self.lab[~self.cavity] = 0
        image = self._acquire()
        return Phantom(image=image, labels=self.lab, spacing=(self.dz, self.ds, self.ds), class_names=list(CLASS_NAMES))

    def _body(self) -> None:
        """Outline, subcutaneous fat, muscle wall, intra-abdominal fat; keeps cavity masks."""
        W = self.W_k[:, None, None]
        D = self.D_k[:, None, None]
        u = self.x[None, None, :] / W
        v = self.y[None, :, None] / D
        rho = np.sqrt(u * u + v * v)
        inv = 1.0 / np.maximum(rho, 1e-6)
        cos_t, sin_t = u * inv, v * inv
        e1, e2, e3 = (float(e) for e in self.e)
        boundary = 1.0 + e1 * sin_t + e2 * (cos_t * cos_t - sin_t * sin_t) + e3 * 2.0 * sin_t * cos_t
        # Normalised depth below the skin: the ellipse and the flat back, whichever is closer.
        depth = np.minimum(1.0 - rho / boundary, v + self.back)
        fat = self.fat * (1.0 + 0.6 * sin_t)  # more fat over the belly than over the back
        wall = fat + self.muscle * (1.0 + 0.3 * sin_t)
        body = depth >= 0
        self.hu[body] = self.hu_of["fat"]
        muscle = body & (depth >= fat) & (depth < wall)
        self.hu[muscle] = self.hu_of["muscle"]
        self.cavity = depth >= wall
        self.hu[self.cavity] = self.hu_of["fat"] + 10.0  # mesenteric fat, a bit denser
        self.under_skin = depth >= fat
        self.body = body
        # Ribs need the angle around the body and the position within the muscle layer.
        self._wall_depth = (depth - fat) / np.maximum(wall - fat, 1e-6)
        self._sin_t = sin_t

        # Scanner table: two carbon shells under the back, across most of the field of view.
        shell = max(5.0, 1.2 * self.ds)
        lowest_row = int(np.nonzero(body.any(axis=(0, 2)))[0].min())
        table_y = float(self.y[lowest_row]) - 0.5 * self.ds - self.table_gap
        for top in (table_y, table_y - 45.0):
            hit = self.box(np.array([-1e9, top - shell, -0.9 * self.W]), np.array([1e9, top, 0.9 * self.W]))
            if hit is not None:
                self.hu[hit[0]] = self.hu_of["table"]

    def _thorax(self) -> None:
        """Lung bases (posterior recesses reach lowest) and the heart on the diaphragm."""
        for side in (1.0, -1.0):
            lung = self.ellipsoid(0.5 * side, -0.25, -60.0 + (8.0 if side < 0 else 0.0), (95, 70, 55), (0, 0, -12))
            hit = self.region(lung)
            if hit is None:
                continue
            sl, c = hit
            mask = (lung.level(c) < 0) & self.cavity[sl]
            self.paint(sl, mask, self.mottled(mask, self.hu_of["lung"], 35.0))
        heart = self.ellipsoid(-0.15, 0.3, -50.0, (45, 45, 55), (-20, 0, 0))
        hit = self.region(heart)
        if hit is not None:
            sl, c = hit
            self.paint(sl, (heart.level(c) < 0) & self.cavity[sl], self.hu_of["heart"])

    def _gut_segment(self, tube: _Tube, wall_mm: float, content: str) -> None:
        hit = self.region(tube)
        if hit is None:
            return
        sl, c = hit
        level = tube.level(c)
        outer = (level < 0) & self.cavity[sl]
        lumen = outer & (level < -wall_mm)
        self.paint(sl, outer, self.hu_of["gut_wall"])
        if not lumen.any():
            return
        if content == "fluid":
            self.paint(sl, lumen, self.hu_of["fluid"])
        elif content == "faeces":
            # Mottled stool with gas bubbles: a lattice pattern in millimetres, so the texture
            # has the same physical grain at every pixel size.
            axes = _rotation(*self.rng.uniform(0.0, 180.0, 3))
            k = 2 * math.pi / float(self.rng.uniform(9.0, 15.0))
            pattern = np.ones(lumen.shape, np.float32)
            for j in range(3):
                proj = float(axes[0, j]) * c[0] + float(axes[1, j]) * c[1] + float(axes[2, j]) * c[2]
                pattern = pattern * np.cos(k * proj + float(self.rng.uniform(0, 6.3)))
            stool = self.hu_of["faeces"] + 60.0 * pattern
            stool[pattern > 0.45] = self.hu_of["gas"]
            self.paint(sl, lumen, stool)
        # Gas collects anteriorly (the patient lies supine) above an air-fluid level.
        y = np.broadcast_to(c[1], lumen.shape)[lumen]
        if content == "gas" or self.rng.random() < 0.35:
            frac = float(self.rng.uniform(0.2, 0.7)) if content != "gas" else float(self.rng.uniform(0.6, 1.0))
            level_y = float(y.max()) - frac * float(y.max() - y.min() + 1e-3)
            gas = lumen & (np.broadcast_to(c[1], lumen.shape) >= level_y)
            if content == "gas":
                self.paint(sl, lumen & ~gas, self.hu_of["fluid"])
            self.paint(sl, gas, self.hu_of["gas"])

    def _gut(self) -> None:
        """Colon frame, duodenal C-loop and small-bowel loops: unlabelled look-alikes."""
        rng = self.rng
        colon = [
            ([(0.62, -0.05, 330), (0.64, 0.0, 240), (0.6, 0.05, 165)], 22.0),  # ascending
            ([(0.6, 0.05, 165), (0.2, 0.45, 185), (-0.2, 0.45, 180), (-0.58, 0.15, 130)], 20.0),  # transverse
            ([(-0.58, 0.15, 130), (-0.66, -0.1, 200), (-0.6, -0.05, 330)], 18.0),  # descending
        ]
        for uva, radius in colon:
            tube = self.tube(uva, [radius] * len(uva), jitter=10.0, wobble=0.12)
            self._gut_segment(tube, 3.0, "faeces" if rng.random() < 0.6 else "gas")
        duodenum = self.tube(
            [(0.12, 0.42, 150), (0.34, 0.12, 160), (0.3, -0.05, 190), (0.0, 0.0, 200), (-0.15, 0.05, 180)],
            [12.0] * 5,
            jitter=6.0,
            wobble=0.1,
        )
        self._gut_segment(duodenum, 2.5, "fluid")
        for _ in range(int(rng.integers(7, 12))):
            start = np.array([rng.uniform(-0.45, 0.45), rng.uniform(-0.1, 0.6), rng.uniform(175, 320)])
            pts = [start]
            for _ in range(int(rng.integers(2, 5))):
                step = rng.normal(size=3)
                step /= np.linalg.norm(step)
                pts.append(pts[-1] + step * np.array([0.18, 0.25, 30.0]))
            tube = self.tube([tuple(p) for p in pts], [float(rng.uniform(9, 13))] * len(pts), jitter=3.0, wobble=0.1)
            content = rng.choice(["fluid", "gas", "faeces"], p=[0.6, 0.15, 0.25])
            self._gut_segment(tube, 2.5, str(content))

    def _liver(self) -> None:
        """Right lobe + left lobe (smooth union), enhancing portal and hepatic veins inside."""
        right = self.ellipsoid(0.42, 0.0, 90.0, (82, 92, 78), (-15, 8, 0), pos_jitter=(0.04, 0.04, 6.0))
        left = self.ellipsoid(-0.12, 0.38, 52.0, (42, 42, 72), (20, 0, 10), pos_jitter=(0.05, 0.04, 6.0))
        hit = self.region(right, left)
        if hit is None:
            return
        sl, c = hit
        level = _smooth_union(right.level(c), left.level(c))
        mask = (level < 0) & self.cavity[sl]
        # Slow parenchymal heterogeneity (a few HU), so the liver is not a flat plateau.
        phase = float(self.rng.uniform(0, 6.3))
        texture = self.hu_of["liver"] + 4.0 * np.cos(0.05 * c[0] + 0.04 * c[1] - 0.03 * c[2] + phase)
        self.paint(sl, mask, texture.astype(np.float32), LABEL_IDS["liver"])
        # Intrahepatic vessels enhance like the IVC/aorta: bright structures inside a label.
        vessels = [
            self.tube([(0.12, -0.15, 15), (0.7, -0.1, 45)], [5.0, 2.5]),
            self.tube([(0.12, -0.15, 15), (0.35, 0.35, 40)], [5.0, 2.5]),
            self.tube([(0.12, -0.15, 15), (-0.1, 0.45, 35)], [4.5, 2.5]),
            self.tube([(0.05, 0.0, 150), (0.28, 0.0, 110), (0.65, -0.05, 95)], [7.0, 5.5, 3.0]),
            self.tube([(0.28, 0.0, 110), (0.1, 0.35, 85)], [5.0, 2.5]),
        ]
        liver_id = LABEL_IDS["liver"]
        for vessel in vessels:
            hit = self.region(vessel)
            if hit is None:
                continue
            vsl, vc = hit
            self.paint(vsl, (vessel.level(vc) < 0) & (self.lab[vsl] == liver_id), self.hu_of["liver_vessel"])

    def _veins(self) -> None:
        """IVC (cuts through the back of the liver) and renal veins: unlabelled, enhancing."""
        ivc = self.tube(
            [(0.08, 0.05, -90), (0.13, -0.15, 20), (0.15, -0.22, 120), (0.14, -0.22, 250), (0.1, -0.3, 340)],
            [13.0, 12.0, 11.0, 11.0, 9.0],
            jitter=4.0,
        )
        renal = [
            self.tube([(0.15, -0.22, 165), (0.3, -0.35, 172)], [5.0, 4.0], jitter=4.0),
            self.tube([(0.15, -0.22, 160), (-0.02, -0.12, 158), (-0.28, -0.32, 160)], [5.0, 5.0, 4.0], jitter=4.0),
        ]
        for tube in [ivc, *renal]:
            hit = self.region(tube)
            if hit is None:
                continue
            sl, c = hit
            self.paint(sl, (tube.level(c) < 0) & self.cavity[sl], self.hu_of["vein"], label=0)

    def _gallbladder(self) -> None:
        """Pear-shaped, in the fossa under the liver, fundus pointing anterior-inferior."""
        gb = self.ellipsoid(
            0.24, 0.36, 150.0, (36, 14, 15), (10, 0, -50), pos_jitter=(0.04, 0.04, 8.0), perturbation=0.06
        )
        hit = self.region(gb)
        if hit is None:
            return
        sl, c = hit
        level = gb.level(c)
        mask = (level < 0) & self.cavity[sl]
        self.paint(sl, mask, self.hu_of["gallbladder_wall"], LABEL_IDS["gallbladder"])
        self.paint(sl, mask & (level < -0.18), self.hu_of["bile"])

    def _stomach(self) -> None:
        """Fundus, body and antrum (a J): wall, dependent fluid and anterior gas; all labelled."""
        parts = [
            self.ellipsoid(-0.36, -0.05, 58.0, (40, 42, 42), pos_jitter=(0.04, 0.04, 6.0)),
            self.ellipsoid(-0.25, 0.28, 112.0, (55, 34, 38), (-25, 10, -20)),
            self.ellipsoid(0.03, 0.42, 148.0, (24, 22, 34), (-10, 0, 0)),
        ]
        hit = self.region(*parts)
        if hit is None:
            return
        sl, c = hit
        level = parts[0].level(c)
        for part in parts[1:]:
            level = _smooth_union(level, part.level(c))
        mask = (level < 0) & self.cavity[sl]
        self.paint(sl, mask, self.hu_of["gut_wall"], LABEL_IDS["stomach"])
        lumen = mask & (level < -0.12)
        if not lumen.any():
            return
        self.paint(sl, lumen, self.hu_of["fluid"])
        y = np.broadcast_to(c[1], lumen.shape)
        ys = y[lumen]
        frac = float(self.rng.uniform(0.0, 0.45))
        gas = lumen & (y > float(ys.max()) - frac * float(ys.max() - ys.min()))
        self.paint(sl, gas, self.hu_of["gas"])

    def _spleen(self) -> None:
        """Crescent along the left posterolateral wall: an ellipsoid minus a medial bite."""
        spleen = self.ellipsoid(-0.62, -0.32, 95.0, (52, 58, 26), (40, 0, 0))
        # The bite sits on the side of the spleen facing the body centre (its hilum).
        inward = -spleen.centre[1:] / (np.linalg.norm(spleen.centre[1:]) + 1e-6)
        axis_x = spleen.axes[1:, 2]
        sign = 1.0 if float(inward @ axis_x) > 0 else -1.0
        bite = _Ellipsoid(
            spleen.centre + spleen.axes[:, 2] * sign * 1.15 * spleen.radii[2],
            spleen.radii * np.array([0.85, 0.7, 0.75]),
            spleen.axes,
            np.zeros((0, 3)),
            np.zeros(0),
            np.zeros(0),
        )
        hit = self.region(spleen)
        if hit is None:
            return
        sl, c = hit
        level = np.maximum(spleen.level(c), -bite.level(c))
        self.paint(sl, (level < 0) & self.cavity[sl], self.hu_of["spleen"], LABEL_IDS["spleen"])

    def _pancreas(self) -> None:
        """Lobulated tube from the head (right, low) across the aorta to the tail (left, high)."""
        pancreas = self.tube(
            [(0.2, -0.02, 152), (0.02, 0.12, 138), (-0.25, 0.02, 125), (-0.45, -0.2, 108)],
            [15.0, 10.0, 11.0, 9.0],
            jitter=6.0,
            wobble=0.15,
        )
        hit = self.region(pancreas)
        if hit is None:
            return
        sl, c = hit
        mask = (pancreas.level(c) < 0) & self.cavity[sl]
        self.paint(sl, mask, self.mottled(mask, self.hu_of["pancreas"], 8.0), LABEL_IDS["pancreas"])

    def _kidneys(self) -> None:
        """Both kidneys (one class): cortex, medullary pyramids, a medial hilum notch."""
        for side, a_centre in ((1.0, 170.0), (-1.0, 158.0)):  # the right kidney sits lower
            kidney = self.ellipsoid(
                0.36 * side, -0.5, a_centre, (58, 28, 28), (-25 * side, -12 * side, 0), perturbation=0.06
            )
            medial = np.array([0.0, 0.35, -side])  # world (z, y, x): medial and a bit anterior
            medial /= np.linalg.norm(medial)
            hilum = _Ellipsoid(
                kidney.centre + medial * 0.95 * kidney.radii[2],
                kidney.radii * np.array([0.4, 0.45, 0.5]),
                kidney.axes,
                np.zeros((0, 3)),
                np.zeros(0),
                np.zeros(0),
            )
            hit = self.region(kidney)
            if hit is None:
                continue
            sl, c = hit
            q = kidney.local(c)
            level = np.maximum(kidney.level(c, q), -hilum.level(c))
            mask = (level < 0) & self.cavity[sl]
            self.paint(sl, mask, self.hu_of["kidney_cortex"], LABEL_IDS["kidney"])
            # Pyramids: inner shell cut into lobes by a coarse angular pattern.
            phase = float(self.rng.uniform(0, 6.3))
            lobes = np.cos(7.0 * q[0] + phase) * np.cos(6.0 * q[1] + 6.0 * q[2]) > -0.2
            medulla = mask & (level < -0.3) & lobes
            self.paint(sl, medulla, self.hu_of["kidney_medulla"])
            # Sinus fat in the hilum stays unlabelled.
            notch = (hilum.level(c) < 0) & self.cavity[sl] & (kidney.level(c, q) < 0.05)
            self.paint(sl, notch & (self.lab[sl] == 0), self.hu_of["fat"])

    def _arteries(self) -> None:
        """Aorta (labelled, down to its bifurcation) and the common iliac arteries (not)."""
        rng = self.rng
        a_bif = float(rng.uniform(215.0, 240.0))
        aorta = self.tube(
            [(-0.14, -0.42, -90), (-0.1, -0.33, 0), (-0.07, -0.24, 90), (-0.06, -0.2, 180), (-0.05, -0.2, a_bif)],
            [13.0, 12.5, 11.5, 10.5, 9.5],
            jitter=4.0,
        )
        hit = self.region(aorta)
        if hit is not None:
            sl, c = hit
            self.paint(sl, (aorta.level(c) < 0) & self.cavity[sl], self.hu_of["aorta"], LABEL_IDS["aorta"])
        bif = aorta.points[-1]
        bif_uva = (bif[2] / self.W, bif[1] / self.D, (self.z[-1] - bif[0] + self.a_top) / self.sz)
        for side in (1.0, -1.0):
            iliac = self.tube([bif_uva, (0.35 * side, -0.25, bif_uva[2] + 90)], [7.0, 6.0], jitter=3.0)
            iliac.points[0] = bif  # start exactly at the bifurcation
            hit = self.region(iliac)
            if hit is None:
                continue
            sl, c = hit
            self.paint(sl, (iliac.level(c) < 0) & self.cavity[sl], self.hu_of["aorta"], label=0)

    def _skeleton(self) -> None:
        """Spine, paraspinal and psoas muscles, iliac wings, ribs: drawn last, clearing labels."""
        rng = self.rng
        muscle, cortex, marrow = self.hu_of["muscle"], self.hu_of["bone_cortex"], self.hu_of["bone_marrow"]
        scale = (self.sx * self.sy) ** 0.5
        vb_y = -0.47 * self.D
        vb_rx, vb_ry = 21.0 * scale, 16.0 * scale
        canal_y, canal_r = vb_y - vb_ry - 10.0 * scale, 8.5 * scale

        # Psoas muscles: appear beside the vertebral bodies and thicken downwards.
        for side in (1.0, -1.0):
            psoas = self.tube(
                [
                    (side * (vb_rx + 6) / self.W, vb_y / self.D + 0.02, 135),
                    (side * (vb_rx + 28) / self.W, vb_y / self.D + 0.18, 340),
                ],
                [3.0, 26.0],
                jitter=3.0,
            )
            hit = self.region(psoas)
            if hit is not None:
                sl, c = hit
                self.paint(sl, (psoas.level(c) < 0) & self.cavity[sl], muscle, label=0)

        hit = self.box(
            np.array([-1e9, canal_y - 70.0 * scale, -90.0 * scale]), np.array([1e9, vb_y + vb_ry * 1.3, 90.0 * scale])
        )
        if hit is not None:
            sl, (Z, Y, X) = hit
            under_skin = self.under_skin[sl]
            a = (float(self.z[-1]) - Z + self.a_top) / self.sz  # reference-anatomy depth per slice
            grow = 1.0 + 0.15 * np.clip(a / 300.0, 0.0, 1.0)  # lumbar vertebrae are larger
            # Paraspinal muscles fill the gutters either side of the spinous process.
            for side in (1.0, -1.0):
                dx = (X - side * 38.0 * scale) / (33.0 * scale)
                dy = (Y - canal_y + 14.0 * scale) / (24.0 * scale)
                para = dx * dx + dy * dy < 1
                self.paint(sl, para & under_skin, muscle, label=0)
            body_level = ((X / (vb_rx * grow)) ** 2 + ((Y - vb_y) / (vb_ry * grow)) ** 2) ** 0.5
            period, disc = 32.0, 7.0
            offset = float(rng.uniform(0, period))
            in_disc = np.mod(a + offset, period) < disc
            vertebral_phase = np.mod(a + offset, period) / period
            vb = body_level < 1.0
            self.paint(sl, vb, cortex, label=0)
            self.paint(sl, vb & (body_level < 0.84), np.where(in_disc, self.hu_of["disc"], marrow).astype(np.float32))
            canal_d = np.sqrt((X / canal_r) ** 2 + ((Y - canal_y) / canal_r) ** 2)
            arch = (canal_d < 1.6) & (canal_d >= 1.0) & ~vb
            spinous = (np.abs(X) < 4.5 * scale) & (Y < canal_y) & (Y > canal_y - 45.0 * scale)
            transverse = (
                (np.abs(Y - canal_y - 4.0 * scale) < 3.5 * scale)
                & (np.abs(X) < vb_rx + 20.0 * scale)
                & (vertebral_phase > 0.4)
                & (vertebral_phase < 0.65)
            )
            posterior = (arch | spinous | transverse) & under_skin
            self.paint(sl, posterior, 0.5 * (cortex + marrow), label=0)
            self.paint(sl, (canal_d < 1.0), self.hu_of["csf"], label=0)

        # Iliac wings: flat plates opening anterolaterally, rising from below the scan.
        for side in (1.0, -1.0):
            wing = self.ellipsoid(
                0.6 * side, -0.3, 375.0, (95, 70, 13), (-35 * side, 0, 0),
                pos_jitter=(0.03, 0.03, 10.0), perturbation=0.05,
            )
            hit = self.region(wing)
            if hit is None:
                continue
            sl, c = hit
            level = wing.level(c)
            inside = (level < 0) & self.under_skin[sl]
            self.paint(sl, inside, cortex, label=0)
            self.paint(sl, inside & (level < -0.25), marrow)

        # Ribs: stripes in the muscle wall that descend from the spine towards the front.
        top = self.a_k < 175.0 * self.sz
        if top.any():
            k = np.nonzero(top)[0]
            ks = slice(int(k.min()), int(k.max()) + 1)
            wall_depth = self._wall_depth[ks]
            ring = self.body[ks] & (wall_depth > 0.15) & (wall_depth < 0.85)
            sin_t = np.broadcast_to(self._sin_t[ks], ring.shape)[ring]
            a = np.broadcast_to(self.a_k[ks][:, None, None], ring.shape)[ring] / self.sz
            around = np.arccos(np.clip(-sin_t, -1.0, 1.0))  # 0 at the spine, pi at the navel
            period = float(rng.uniform(26.0, 32.0))
            phase = np.mod(a - 30.0 * around + float(rng.uniform(0, period)), period)
            rib = (phase < 9.0) & (around > 0.35) & (around < 2.5) & (a - 30.0 * around < 120.0)
            ring_idx = np.nonzero(ring)
            sel = tuple(idx[rib] for idx in ring_idx)
            self.hu[ks][sel] = self.hu_of["rib"]
            self.lab[ks][sel] = 0

    def _acquire(self) -> np.ndarray:
        """Partial-volume blur, smooth gain/offset field, noise; rounded to int16 HU."""
        rng = self.rng
        nz, ny, nx = self.shape
        # Partial volume, in voxels: the in-plane PSF spreads over neighbouring pixels, while
        # the slice profile is mostly the slice itself, so z gets the smaller sigma.
        in_plane = float(rng.uniform(0.4, 0.8))
        sigma = (float(rng.uniform(0.3, 0.6)), in_plane, in_plane)
        img = ndimage.gaussian_filter(self.hu, sigma, mode="nearest", truncate=2.5)

        def smooth_field() -> np.ndarray:
            """Sum of two separable products of random low-order cosine series, max |f| = 1."""

            def series(n: int) -> np.ndarray:
                t = np.linspace(0.0, 1.0, n, dtype=np.float32)
                c = rng.normal(0.0, 1.0, 3)
                out = c[0] * np.cos(math.pi * t) + c[1] * np.cos(2 * math.pi * t) + c[2] * np.sin(math.pi * t)
                return out.astype(np.float32)

            f = np.zeros((nz, ny, nx), np.float32)
            for _ in range(2):
                f += series(nz)[:, None, None] * series(ny)[None, :, None] * series(nx)[None, None, :]
            return f / max(float(np.abs(f).max()), 1e-6)

        # Bias: the gain acts on attenuation (HU + 1000), so air stays air while soft tissue
        # drifts by up to ~20 HU across the volume; an independent offset adds up to ~10 HU.
        img += (img + 1000.0) * (smooth_field() * float(rng.uniform(0.005, 0.02)))
        img += smooth_field() * float(rng.uniform(3.0, 10.0))
        noise_sd = float(rng.uniform(10.0, 25.0))
        img += rng.standard_normal(self.shape, dtype=np.float32) * noise_sd
        np.clip(np.rint(img, out=img), -1024, 3071, out=img)
        return img.astype(np.int16)


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise InputError(f"phantom shape {shape!r} is not a sequence of three integers (z, y, x)") from None
    if len(dims) != 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise InputError(f"phantom shape {shape!r} must be three integers (z, y, x)")
    dims = tuple(int(d) for d in dims)
    if any(d < m for d, m in zip(dims, MIN_SHAPE)):
        raise InputError(f"phantom shape {dims} is too small: each of (z, y, x) must be at least {MIN_SHAPE}")
    return dims  # type: ignore[return-value]


def _check_seed(seed: int, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"phantom {what} {seed!r} must be a non-negative integer")
    return int(seed)


def generate_phantom(seed: int, shape: tuple[int, int, int] = DEFAULT_SHAPE) -> Phantom:
    """Generate one synthetic abdominal CT volume and its organ labels.

    Args:
        seed: any non-negative integer; the same seed and shape always give identical arrays.
        shape: ``(z, y, x)`` voxels, at least :data:`MIN_SHAPE`. The anatomy is the same
            physical size whatever the shape; the spacing adapts (see the module docstring).

    Returns:
        A :class:`Phantom` with ``int16`` HU image, ``uint8`` labels (:data:`CLASS_NAMES`),
        and the ``(z, y, x)`` spacing in mm.

    Raises:
        InputError: negative or non-integer seed, malformed or too small shape.
    """
    seed = _check_seed(seed)
    dims = _check_shape(shape)
    return _Builder(seed, dims).build()


# ---------------------------------------------------------------------------------------------
# nnU-Net v2 raw dataset
# ---------------------------------------------------------------------------------------------


def case_seed(seed: int, split: str, index: int) -> int:
    """Seed of case ``index`` of ``split`` ("train" or "test") in a dataset made with ``seed``.

    Derived through :class:`numpy.random.SeedSequence` with the split in the spawn key, so
    training and test cases come from disjoint, independent streams.
    """
    if split not in _SPLITS:
        raise InputError(f"phantom split {split!r} must be one of {sorted(_SPLITS)}")
    sequence = np.random.SeedSequence(entropy=_check_seed(seed), spawn_key=(_SPLITS[split][2], int(index)))
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


def _case_id(split: str, index: int) -> str:
    # Test cases get their own names so that reports never confuse them with training cases.
    return f"{_CASE_PREFIX}_{index:03d}" if split == "train" else f"{_CASE_PREFIX}_{split}_{index:03d}"


def _case_paths(root: Path, split: str, index: int) -> tuple[Path, Path]:
    images, labels, _ = _SPLITS[split]
    case = _case_id(split, index)
    return root / images / f"{case}_0000.nii.gz", root / labels / f"{case}.nii.gz"


def _save_nifti(array_zyx: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    affine = phantom_affine(spacing, array_zyx.shape)
    # .T of a C-ordered (z, y, x) array is a Fortran-ordered (x, y, z) view: exactly the
    # layout NIfTI stores, so nibabel writes it without another copy.
    img = nib.Nifti1Image(array_zyx.T, affine)
    img.header.set_data_dtype(array_zyx.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


def _write_case(
    root: Path, split: str, index: int, seed: int, shape: tuple[int, int, int], overwrite: bool
) -> tuple[str, str, bool]:
    """Generate and write one case unless both its files exist. Returns (split, case id, written)."""
    image_path, label_path = _case_paths(root, split, index)
    if not overwrite and image_path.exists() and label_path.exists():
        return split, _case_id(split, index), False
    phantom = generate_phantom(case_seed(seed, split, index), shape)
    _save_nifti(phantom.image, phantom.spacing, image_path)
    _save_nifti(phantom.labels, phantom.spacing, label_path)
    return split, _case_id(split, index), True


def _dataset_json(num_train: int, num_test: int, seed: int, shape: tuple[int, int, int]) -> dict:
    return {
        "name": "S2VNetPhantom",
        "description": (
            "SYNTHETIC data: CT-like abdominal phantoms generated by s2vnet.data.phantom (geometric "
            "organ models with realistic HU, noise, blur and bias; no patient data). For tests and "
            "the CPU demo, not for benchmarking."
        ),
        "channel_names": {"0": "CT"},
        "labels": {name: i for i, name in enumerate(CLASS_NAMES)},
        "numTraining": num_train,
        "numTest": num_test,
        "file_ending": ".nii.gz",
        "phantom": {"generator": __name__, "version": GENERATOR_VERSION, "seed": seed, "shape_zyx": list(shape)},
    }


def _check_existing(root: Path, seed: int, shape: tuple[int, int, int], overwrite: bool) -> None:
    """Refuse to write into a folder that holds another dataset, or to resume other settings.

    A folder whose dataset.json is not ours is refused even with ``overwrite``: that flag means
    "regenerate the phantoms", not "clobber someone's data". Unreadable or mismatching phantom
    metadata only blocks a resume.
    """
    path = root / "dataset.json"
    if not path.exists():
        return
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if overwrite:
            return
        raise InputError(
            f"{path}: cannot read the existing dataset.json ({exc}); pass overwrite=True or use another folder"
        ) from None
    info = existing.get("phantom") if isinstance(existing, dict) else None
    if not isinstance(info, dict) or info.get("generator") != __name__:
        raise InputError(
            f"{path}: the folder holds a dataset that is not a phantom dataset; refusing to write phantoms into it"
        )
    expected = {"version": GENERATOR_VERSION, "seed": seed, "shape_zyx": list(shape)}
    found = {key: info.get(key) for key in expected}
    if found != expected and not overwrite:
        raise InputError(
            f"{path}: existing phantoms were generated with {found}, this call asks for {expected}; "
            "resuming would mix cases. Pass overwrite=True or use another folder"
        )


def _warn_stray_cases(root: Path, split: str, count: int) -> None:
    images, _, _ = _SPLITS[split]
    pattern = re.compile(rf"{_CASE_PREFIX}_(\d+)_0000\.nii\.gz$")
    stray = []
    for path in (root / images).glob(f"{_CASE_PREFIX}_*_0000.nii.gz"):
        match = pattern.match(path.name)
        if match and int(match.group(1)) >= count:
            stray.append(path.name)
    if stray:
        logger.warning(
            "%s/%s holds %d case(s) beyond the %d requested (e.g. %s); nnU-Net will see them",
            root,
            images,
            len(stray),
            count,
            sorted(stray)[0],
        )


ProgressCallback = Callable[[str, str, bool], None]


def write_phantom_dataset(
    out_dir: PathLike,
    num_train: int,
    num_test: int = 0,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    workers: int = 1,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> Path:
    """Write phantoms as an nnU-Net v2 raw dataset (``imagesTr``, ``labelsTr``, ``imagesTs``, ...).

    Case ``i`` of each split is ``phantom_{i:03d}`` (image ``phantom_{i:03d}_0000.nii.gz``,
    int16 HU; label ``phantom_{i:03d}.nii.gz``, uint8), RAS with a diagonal affine holding the
    spacing. Test cases use seeds from a separate stream (:func:`case_seed`), so no test case
    equals a training case. Cases whose two files exist are skipped (the run is resumable)
    unless ``overwrite``; every file is written atomically; ``dataset.json`` comes last.

    Args:
        out_dir: dataset folder (created if needed).
        num_train: number of training cases (>= 1).
        num_test: number of test cases (>= 0).
        seed: dataset seed; the per-case seeds derive from it.
        shape: ``(z, y, x)`` of every case.
        workers: processes used for generation (1 = in this process).
        overwrite: regenerate existing cases, even ones made with other settings (a folder
            holding a dataset that is not a phantom dataset is refused all the same).
        progress: called in this process after each case as ``progress(split, case_id, written)``.

    Returns:
        The dataset folder.

    Raises:
        InputError: bad counts, seed, shape or workers; ``out_dir`` is a file; the folder
            holds a different dataset or phantoms made with other settings.
    """
    for name, value, minimum in (("num_train", num_train, 1), ("num_test", num_test, 0), ("workers", workers, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise InputError(f"phantom dataset {name}={value!r} must be an integer >= {minimum}")
    seed = _check_seed(seed)
    dims = _check_shape(shape)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InputError(f"phantom dataset folder {root} exists and is not a directory")
    _check_existing(root, seed, dims, overwrite)
    root.mkdir(parents=True, exist_ok=True)

    jobs = [("train", i) for i in range(int(num_train))] + [("test", i) for i in range(int(num_test))]
    written = 0

    def done(result: tuple[str, str, bool]) -> None:
        nonlocal written
        written += int(result[2])
        if progress is not None:
            progress(*result)

    if workers == 1 or len(jobs) <= 1:
        for split, index in jobs:
            done(_write_case(root, split, index, seed, dims, overwrite))
    else:
        with ProcessPoolExecutor(max_workers=min(int(workers), len(jobs))) as pool:
            futures = [pool.submit(_write_case, root, split, index, seed, dims, overwrite) for split, index in jobs]
            for future in as_completed(futures):
                done(future.result())

    _warn_stray_cases(root, "train", int(num_train))
    _warn_stray_cases(root, "test", int(num_test))
    meta = _dataset_json(int(num_train), int(num_test), seed, dims)
    meta_path = root / "dataset.json"
    # Rewritten only when it changes, so a resumed run that adds nothing touches nothing.
    if overwrite or not meta_path.exists() or json.loads(meta_path.read_text()) != meta:
        write_json_atomic(meta_path, meta)
    logger.debug(
        "phantom dataset %s: %d train + %d test cases, %d written, %d already present",
        root,
        num_train,
        num_test,
        written,
        len(jobs) - written,
    )
    return root
