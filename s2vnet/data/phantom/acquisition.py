"""What the scanner adds to a painted phantom: partial-volume blur, a smooth bias field, noise."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def acquire(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partial-volume blur, smooth gain/offset field, noise; rounded to int16 HU.

    ``hu`` is the painted float32 ``(z, y, x)`` volume (left unchanged); ``rng`` continues the
    phantom's random stream, so the draws here come after all the anatomy's.
    """
    shape = hu.shape
    nz, ny, nx = shape
    # Partial volume, in voxels: the in-plane PSF spreads over neighbouring pixels, while
    # the slice profile is mostly the slice itself, so z gets the smaller sigma.
    in_plane = float(rng.uniform(0.4, 0.8))
    sigma = (float(rng.uniform(0.3, 0.6)), in_plane, in_plane)
    img = ndimage.gaussian_filter(hu, sigma, mode="nearest", truncate=2.5)

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
    img += rng.standard_normal(shape, dtype=np.float32) * noise_sd
    np.clip(np.rint(img, out=img), -1024, 3071, out=img)
    return img.astype(np.int16)

