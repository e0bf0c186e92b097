"""S2VNet's model. Importing this package registers its Detectron2 components:
the ``S2VNet`` meta architecture, the ``TimmBackbone`` backbone and the pixel decoders."""
from s2vnet.modeling.backbone import timm_backbone  # noqa: F401  (registers TimmBackbone)
from s2vnet.modeling.meta_arch import S2VNet  # noqa: F401  (registers S2VNet)
from s2vnet.modeling.pixel_decoder import msdeformattn  # noqa: F401  (registers MSDeformAttnPixelDecoder)
