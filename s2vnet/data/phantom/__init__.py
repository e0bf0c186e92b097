"""Synthetic CT-like abdominal phantoms for tests and the CPU demo.

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

Modules:

* :mod:`~s2vnet.data.phantom.shapes` -- ellipsoids and tubes as level sets, smooth union, rotations;
* :mod:`~s2vnet.data.phantom.anatomy` -- one case: habitus, body, organs (:func:`generate_phantom`);
* :mod:`~s2vnet.data.phantom.acquisition` -- the scan: partial-volume blur, bias field, noise;
* :mod:`~s2vnet.data.phantom.dataset` -- an nnU-Net v2 raw data set of phantoms
  (:func:`write_phantom_dataset`, :func:`case_seed`).
"""
from s2vnet.data.phantom.anatomy import (
    CLASS_NAMES,
    DEFAULT_SHAPE,
    LABEL_IDS,
    MIN_SHAPE,
    TISSUE_HU,
    Phantom,
    generate_phantom,
    phantom_affine,
)
from s2vnet.data.phantom.dataset import GENERATOR_VERSION, ProgressCallback, case_seed, write_phantom_dataset

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_SHAPE",
    "GENERATOR_VERSION",
    "LABEL_IDS",
    "MIN_SHAPE",
    "TISSUE_HU",
    "Phantom",
    "ProgressCallback",
    "case_seed",
    "generate_phantom",
    "phantom_affine",
    "write_phantom_dataset",
]
