"""timm models as Detectron2 backbones returning res2-res5 (strides 4, 8, 16, 32), and res1
(stride 2) on request.

Any timm model with ``features_only`` support works: Swin-B for the paper configs, ResNet-50, and
small CNNs for the CPU configs. Grayscale CT/MR slices are replicated into 3 channels by the meta
architecture before normalisation (see ``MODEL.PIXEL_MEAN``), so ImageNet-pretrained stems apply
unchanged. Pretrained weights come from a local file (``MODEL.TIMM.PRETRAINED_WEIGHTS``): nothing is
ever downloaded.
"""
import logging
from pathlib import Path
from typing import Dict, List

import timm
import torch
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec

from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

# res1 (stride 2) is there for configs whose mask features run at 1/2 resolution (small inputs).
_STRIDE_TO_NAME = {2: "res1", 4: "res2", 8: "res3", 16: "res4", 32: "res5"}


class TimmBackbone(Backbone):
    """Wrap ``timm.create_model(name, features_only=True)`` with Detectron2's Backbone contract."""

    def __init__(
        self,
        model_name: str,
        out_features: List[str],
        pretrained_weights: str = "",
        drop_path_rate: float = 0.0,
        img_size: int = 512,
    ):
        super().__init__()
        kwargs = {"features_only": True, "in_chans": 3, "drop_path_rate": drop_path_rate}
        if pretrained_weights:
            path = Path(pretrained_weights)
            if not path.is_file():
                raise InputError(
                    f"MODEL.TIMM.PRETRAINED_WEIGHTS = {pretrained_weights!r}: file not found "
                    "(pretrained weights are read from a local file; set '' for random initialisation)"
                )
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        if not timm.is_model(model_name.split(".")[0]):  # "name.tag" selects pretrained weights in timm
            raise InputError(f"MODEL.TIMM.MODEL_NAME = {model_name!r} is not a timm model")
        try:
            self.body = _create_timm_model(model_name, img_size, kwargs)
        except (RuntimeError, KeyError) as error:
            if pretrained_weights:
                raise InputError(
                    f"MODEL.TIMM.PRETRAINED_WEIGHTS = {pretrained_weights!r} does not fit timm model "
                    f"{model_name!r}: {error}"
                ) from None
            raise
        if pretrained_weights:
            logger.info("Loaded ImageNet weights for %s from %s", model_name, pretrained_weights)

        info = self.body.feature_info
        reductions, channels = info.reduction(), info.channels()
        # The channels-last output of transformer backbones (Swin) is permuted to NCHW in forward().
        self._channels_last = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        # Keep, for each stride, the last stage producing it (the deepest features at that resolution).
        stride_to_index = {reduction: index for index, reduction in enumerate(reductions)}
        self._index_of: Dict[str, int] = {}
        for stride, name in _STRIDE_TO_NAME.items():
            if name in out_features:
                if stride not in stride_to_index:
                    raise InputError(
                        f"timm model {model_name!r} has no feature map at stride {stride} for {name} "
                        f"(its strides are {reductions})"
                    )
                self._index_of[name] = stride_to_index[stride]
        self._out_features = [name for name in _STRIDE_TO_NAME.values() if name in self._index_of]
        self._out_feature_strides = {name: reductions[self._index_of[name]] for name in self._out_features}
        self._out_feature_channels = {name: channels[self._index_of[name]] for name in self._out_features}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = self.body(x)
        features = {}
        for name in self._out_features:
            feature = outputs[self._index_of[name]]
            if self._channels_last:
                feature = feature.permute(0, 3, 1, 2)
            features[name] = feature.contiguous()
        return features

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32


def _create_timm_model(model_name: str, img_size: int, kwargs: dict) -> torch.nn.Module:
    """Create the timm model; transformer backbones additionally get a dynamic input size.

    Swin-like models fix their input size at construction. ``dynamic_img_size`` lets them run on any
    size, padding to the attention window internally (512 / 4 = 128 is not a multiple of 7), which
    also lets one model serve 512x512 training crops and native-size inference slices. CNNs do not
    know these arguments and reject them with a TypeError at construction, before any work is done.
    """
    try:
        return timm.create_model(model_name, img_size=img_size, strict_img_size=False, dynamic_img_size=True, **kwargs)
    except TypeError:
        return timm.create_model(model_name, **kwargs)


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """Detectron2 builder: ``MODEL.BACKBONE.NAME: "build_timm_backbone"`` (alias ``TimmBackbone``)."""
    return TimmBackbone(
        model_name=cfg.MODEL.TIMM.MODEL_NAME,
        out_features=list(cfg.MODEL.TIMM.OUT_FEATURES),
        pretrained_weights=cfg.MODEL.TIMM.PRETRAINED_WEIGHTS,
        drop_path_rate=cfg.MODEL.TIMM.DROP_PATH_RATE,
        img_size=cfg.MODEL.TIMM.IMG_SIZE,
    )


# Detectron2 calls BACKBONE_REGISTRY.get(name)(cfg, input_shape); registering the builder under the
# class's name lets configs say ``MODEL.BACKBONE.NAME: TimmBackbone``.
BACKBONE_REGISTRY._do_register("TimmBackbone", build_timm_backbone)
