"""The anatomy of one phantom: body, unlabelled distractors and labelled organs, then the scan.

:func:`generate_phantom` draws a case's habitus, scan range and field of view, paints the body
and organs (see :mod:`s2vnet.data.phantom` for what it contains) into a float HU volume and a
label volume, and hands the HU volume to :func:`~s2vnet.data.phantom.acquisition.acquire` for
blur, bias and noise. Every random draw goes through one generator in a fixed order, so the
same seed and shape always give the same arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from s2vnet.data.phantom.acquisition import acquire
from s2vnet.data.phantom.shapes import Coords, Ellipsoid, Tube, rotation, smooth_union
from s2vnet.utils.errors import InputError

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


class PaintedShape(NamedTuple):
    """Where :meth:`_Builder.paint_inside` painted, for the layers drawn inside it."""

    box: tuple[slice, ...]  # voxel slices of the shape's bounding box
    coords: Coords  # world coordinates of that box
    level: np.ndarray  # the shape's level set there (negative inside)
    mask: np.ndarray  # the voxels painted


class _Builder:
    """Draws one phantom. Every random draw goes through ``self.rng`` in a fixed order."""

    def __init__(self, seed: int, shape: tuple[int, int, int]) -> None:
        self.rng = np.random.default_rng(seed)
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
        for axis_coords, step, low, high in zip((self.z, self.y, self.x), (self.dz, self.ds, self.ds), lo, hi):
            start = int(math.ceil((low - float(axis_coords[0])) / step))
            stop = int(math.floor((high - float(axis_coords[0])) / step)) + 1
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
    ) -> Ellipsoid:
        """A jittered, perturbed ellipsoid of the reference anatomy.

        ``radii`` are (z, y, x) mm for the reference adult, scaled by this case's habitus;
        ``angles`` (axial, coronal, sagittal) in degrees; ``pos_jitter`` is (du, dv, da mm).
        """
        rng = self.rng
        du, dv, da = (float(rng.uniform(-j, j)) for j in pos_jitter)
        centre = self.point(u + du, v + dv, a + da)
        scale = np.array([self.sz, self.sy, self.sx]) * float(rng.uniform(1 - size_jitter, 1 + size_jitter))
        r = np.asarray(radii, float) * scale * rng.uniform(0.95, 1.05, 3)
        axes = rotation(*(np.asarray(angles, float) + rng.uniform(-angle_jitter, angle_jitter, 3)))
        n_waves = 3
        directions = rng.normal(size=(n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        waves = directions * rng.uniform(1.5, 3.2, (n_waves, 1))
        phases = rng.uniform(0.0, 2 * math.pi, n_waves)
        weights = rng.uniform(0.5, 1.0, n_waves)
        amps = weights / weights.sum() * perturbation * float(rng.uniform(0.7, 1.0))
        return Ellipsoid(centre, r, axes, waves, phases, amps)

    def tube(
        self,
        uva: Sequence[Sequence[float]],
        radii: Sequence[float],
        jitter: float = 6.0,
        wobble: float = 0.0,
    ) -> Tube:
        """A tube through reference-anatomy points ``(u, v, a)``, each jittered by ``jitter`` mm."""
        rng = self.rng
        pts = np.array([self.point(u, v, a) for u, v, a in uva])
        pts += rng.uniform(-jitter, jitter, pts.shape)
        scale = (self.sx * self.sy) ** 0.5 * float(rng.uniform(0.85, 1.15))
        r = np.asarray(radii, float) * scale
        direction = rng.normal(size=3)
        wave = direction / np.linalg.norm(direction) * 2 * math.pi / float(rng.uniform(18.0, 30.0))
        return Tube(pts, r, wobble, wave, float(rng.uniform(0, 2 * math.pi)))

    def region(self, *shapes: Union[Ellipsoid, Tube]) -> Optional[tuple[tuple[slice, ...], Coords]]:
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

    def paint_inside(
        self,
        shape: Union[Ellipsoid, Tube],
        hu: float,
        label: Optional[int] = None,
        mottle_sd: Optional[float] = None,
        within: Optional[np.ndarray] = None,
    ) -> Optional[PaintedShape]:
        """Paint one tissue inside ``shape`` and ``within`` (default: the abdominal cavity).

        ``label`` is as in :meth:`paint`; with ``mottle_sd`` the tissue gets a :meth:`mottled`
        texture of that many HU. Returns where it painted, for inner layers (walls with a lumen,
        cortex with marrow), or None if the shape lies outside the scan.
        """
        hit = self.region(shape)
        if hit is None:
            return None
        sl, c = hit
        level = shape.level(c)
        mask = (level < 0) & (self.cavity if within is None else within)[sl]
        self.paint(sl, mask, hu if mottle_sd is None else self.mottled(mask, hu, mottle_sd), label)
        return PaintedShape(sl, c, level, mask)

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
        image = acquire(self.hu, self.rng)
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
            self.paint_inside(lung, self.hu_of["lung"], mottle_sd=35.0)
        heart = self.ellipsoid(-0.15, 0.3, -50.0, (45, 45, 55), (-20, 0, 0))
        self.paint_inside(heart, self.hu_of["heart"])

    def _gut_segment(self, tube: Tube, wall_mm: float, content: str) -> None:
        painted = self.paint_inside(tube, self.hu_of["gut_wall"])
        if painted is None:
            return
        sl, c, level, outer = painted
        lumen = outer & (level < -wall_mm)
        if not lumen.any():
            return
        if content == "fluid":
            self.paint(sl, lumen, self.hu_of["fluid"])
        elif content == "faeces":
            # Mottled stool with gas bubbles: a lattice pattern in millimetres, so the texture
            # has the same physical grain at every pixel size.
            axes = rotation(*self.rng.uniform(0.0, 180.0, 3))
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
        level = smooth_union(right.level(c), left.level(c))
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
            self.paint_inside(tube, self.hu_of["vein"], label=0)

    def _gallbladder(self) -> None:
        """Pear-shaped, in the fossa under the liver, fundus pointing anterior-inferior."""
        gb = self.ellipsoid(
            0.24, 0.36, 150.0, (36, 14, 15), (10, 0, -50), pos_jitter=(0.04, 0.04, 8.0), perturbation=0.06
        )
        wall = self.paint_inside(gb, self.hu_of["gallbladder_wall"], LABEL_IDS["gallbladder"])
        if wall is not None:
            self.paint(wall.box, wall.mask & (wall.level < -0.18), self.hu_of["bile"])

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
            level = smooth_union(level, part.level(c))
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
        bite = Ellipsoid.smooth(
            spleen.centre + spleen.axes[:, 2] * sign * 1.15 * spleen.radii[2], spleen.radii * np.array([0.85, 0.7, 0.75]), spleen.axes
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
        self.paint_inside(pancreas, self.hu_of["pancreas"], LABEL_IDS["pancreas"], mottle_sd=8.0)

    def _kidneys(self) -> None:
        """Both kidneys (one class): cortex, medullary pyramids, a medial hilum notch."""
        for side, a_centre in ((1.0, 170.0), (-1.0, 158.0)):  # the right kidney sits lower
            kidney = self.ellipsoid(
                0.36 * side, -0.5, a_centre, (58, 28, 28), (-25 * side, -12 * side, 0), perturbation=0.06
            )
            medial = np.array([0.0, 0.35, -side])  # world (z, y, x): medial and a bit anterior
            medial /= np.linalg.norm(medial)
            hilum = Ellipsoid.smooth(
                kidney.centre + medial * 0.95 * kidney.radii[2], kidney.radii * np.array([0.4, 0.45, 0.5]), kidney.axes
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
        self.paint_inside(aorta, self.hu_of["aorta"], LABEL_IDS["aorta"])
        bif = aorta.points[-1]
        bif_uva = (bif[2] / self.W, bif[1] / self.D, (self.z[-1] - bif[0] + self.a_top) / self.sz)
        for side in (1.0, -1.0):
            iliac = self.tube([bif_uva, (0.35 * side, -0.25, bif_uva[2] + 90)], [7.0, 6.0], jitter=3.0)
            iliac.points[0] = bif  # start exactly at the bifurcation
            self.paint_inside(iliac, self.hu_of["aorta"], label=0)

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
            self.paint_inside(psoas, muscle, label=0)

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
            bone = self.paint_inside(wing, cortex, label=0, within=self.under_skin)
            if bone is not None:
                self.paint(bone.box, bone.mask & (bone.level < -0.25), marrow)

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


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """The phantom shape ``(z, y, x)`` as three ints, checked against :data:`MIN_SHAPE`.

    Raises:
        InputError: not three integers, or smaller than :data:`MIN_SHAPE`.
    """
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


def check_seed(seed: int, what: str = "seed") -> int:
    """``seed`` as an int; ``what`` names it in the error.

    Raises:
        InputError: a negative, non-integer or boolean seed.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"phantom {what} {seed!r} must be a non-negative integer")
    return int(seed)


def generate_phantom(seed: int, shape: tuple[int, int, int] = DEFAULT_SHAPE) -> Phantom:
    """Generate one synthetic abdominal CT volume and its organ labels.

    Args:
        seed: any non-negative integer; the same seed and shape always give identical arrays.
        shape: ``(z, y, x)`` voxels, at least :data:`MIN_SHAPE`. The anatomy is the same
            physical size whatever the shape; the spacing adapts (see :mod:`s2vnet.data.phantom`).

    Returns:
        A :class:`Phantom` with ``int16`` HU image, ``uint8`` labels (:data:`CLASS_NAMES`),
        and the ``(z, y, x)`` spacing in mm.

    Raises:
        InputError: negative or non-integer seed, malformed or too small shape.
    """
    seed = check_seed(seed)
    dims = check_shape(shape)
    return _Builder(seed, dims).build()
