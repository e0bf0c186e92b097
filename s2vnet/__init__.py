"""S2VNet: universal volumetric medical image segmentation by clustering propagation.

Importing the package applies the small Detectron2 compatibility shims of :mod:`s2vnet.compat`
(only where the installed Detectron2 needs them); everything else is imported explicitly.
"""
from s2vnet import compat as _compat

__version__ = "0.1.0"

_compat.apply()
