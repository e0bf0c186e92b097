"""Geometric primitives of the phantoms, in world millimetres ``(z, y, x)``.

Shapes are level sets: ``level(coords)`` is negative inside. :class:`Ellipsoid` has a smoothly
wobbling boundary, :class:`Tube` follows a polyline with varying radius, :func:`smooth_union`
joins two of them with a rounded seam. Coordinates are broadcastable grids (one array per axis),
so a shape is evaluated only on the bounding box it covers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

#: Broadcastable world coordinates (mm) of a voxel grid, one array per axis ``(z, y, x)``.
Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def rotation(axial: float, coronal: float, sagittal: float) -> np.ndarray:
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
class Ellipsoid:
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

    @classmethod
    def smooth(cls, centre: np.ndarray, radii: np.ndarray, axes: np.ndarray) -> "Ellipsoid":
        """An ellipsoid without boundary wobble (for cut-outs such as the spleen's hilum bite)."""
        return cls(centre, radii, axes, np.zeros((0, 3)), np.zeros(0), np.zeros(0))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World box ``(lo, hi)`` that holds the whole shape, boundary wobble included."""
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
        """Level set on ``coords`` (negative inside); ``q`` reuses already computed :meth:`local` coordinates."""
        q = self.local(coords) if q is None else q
        out = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2]) - 1.0
        for w, phase, amp in zip(self.waves, self.phases, self.amps):
            out -= float(amp) * np.cos(float(w[0]) * q[0] + float(w[1]) * q[1] + float(w[2]) * q[2] + float(phase))
        return out


@dataclass
class Tube:
    """Tube of varying radius along a polyline (world mm). ``level`` is a signed mm distance."""

    points: np.ndarray  # (n, 3)
    radii: np.ndarray  # (n,)
    wobble: float = 0.0  # relative radius modulation (lobulated surfaces)
    wave: np.ndarray = field(default_factory=lambda: np.zeros(3))  # rad/mm, world frame
    phase: float = 0.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World box ``(lo, hi)`` that holds the whole tube, wobble included."""
        r = (self.radii + self.wobble * self.radii.mean())[:, None]
        return (self.points - r).min(axis=0), (self.points + r).max(axis=0)

    def level(self, coords: Coords) -> np.ndarray:
        """Signed distance (mm) to the tube's surface on ``coords``, negative inside."""
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


def smooth_union(a: np.ndarray, b: np.ndarray, k: float = 0.15) -> np.ndarray:
    """Union of two level sets with a rounded seam (polynomial smooth minimum)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)
