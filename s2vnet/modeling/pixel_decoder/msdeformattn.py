"""Multi-scale deformable-attention pixel decoder (Mask2Former's design, pure PyTorch).

Design followed: Mask2Former's MSDeformAttn pixel decoder (Cheng et al. 2022); written for this project, no code copied.

Backbone features at strides 8, 16 and 32 are projected to a common width, refined jointly by a
stack of deformable-attention encoder layers, and returned as the 3-level memory the transformer
decoder clusters over. A small FPN step adds the stride-4 backbone feature to produce the mask
features, against which every query's mask embedding is dotted to give its mask logits.

Contract (as Mask2Former's pixel decoders): ``forward_features(features)`` returns
``(mask_features, multi_scale_features)`` with mask features (B, MASK_DIM, H/4, W/4) and the
memory ordered from coarse to fine: [1/32, 1/16, 1/8].
"""
from typing import Dict, List, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import nn

from s2vnet.modeling.layers import TransformerSettings, feedforward
from s2vnet.modeling.pixel_decoder.ms_deform_attn import MSDeformAttn
from s2vnet.modeling.position_encoding import PositionEmbeddingSine

PIXEL_DECODER_REGISTRY = Registry("S2VNET_PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = "Pixel decoders: backbone features -> mask features + multi-scale memory."


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    return PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, norm: str, activation=None) -> Conv2d:
    """The one conv + norm (+ activation) building block of the pixel decoder, Xavier-initialised."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=kernel_size // 2,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=activation,
    )
    weight_init.c2_xavier_fill(conv)
    return conv


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then an FFN (post-norm, as Deformable DETR)."""

    def __init__(self, d_model: int, dim_feedforward: int, n_levels: int, n_heads: int, n_points: int, dropout: float):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = feedforward(d_model, dim_feedforward, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes):
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout(attended))
        return self.norm2(src + self.dropout(self.ffn(src)))


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_in_features: List[str],
        conv_dim: int,
        mask_dim: int,
        norm: str,
        encoder: TransformerSettings,
        num_points: int,
        common_stride: int = 4,
    ):
        super().__init__()
        # Coarse to fine, as Mask2Former: the decoder's first layer attends to the 1/32 level.
        ordered = sorted(input_shape.items(), key=lambda item: -item[1].stride)
        self.transformer_in_features = [name for name, _ in ordered if name in transformer_in_features]
        finest_transformer_stride = min(input_shape[name].stride for name in self.transformer_in_features)
        # Backbone levels finer than the transformer's, down to the common stride, get FPN convs.
        self.fpn_features = [
            name for name, shape in ordered if common_stride <= shape.stride < finest_transformer_stride
        ]
        n_levels = len(self.transformer_in_features)
        self.input_proj = nn.ModuleList(
            conv_norm_act(input_shape[name].channels, conv_dim, 1, norm) for name in self.transformer_in_features
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, conv_dim))
        nn.init.normal_(self.level_embed)
        self.position_encoding = PositionEmbeddingSine(conv_dim // 2)
        self.encoder_layers = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, encoder.dim_feedforward, n_levels, encoder.num_heads, num_points, encoder.dropout)
            for _ in range(encoder.num_layers)
        )
        self.lateral_convs = nn.ModuleList(conv_norm_act(input_shape[n].channels, conv_dim, 1, norm) for n in self.fpn_features)
        self.output_convs = nn.ModuleList(conv_norm_act(conv_dim, conv_dim, 3, norm, F.relu) for _ in self.fpn_features)
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = min(3, n_levels)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "encoder": TransformerSettings(
                num_layers=head.TRANSFORMER_ENC_LAYERS,
                num_heads=cfg.MODEL.MASK_FORMER.NHEADS,
                dim_feedforward=head.DEFORMABLE_DIM_FEEDFORWARD,
                dropout=cfg.MODEL.MASK_FORMER.DROPOUT,
            ),
            "num_points": head.DEFORMABLE_NUM_POINTS,
            "common_stride": head.COMMON_STRIDE,
        }

    @staticmethod
    def _reference_points(spatial_shapes: List[Tuple[int, int]], device) -> torch.Tensor:
        """Pixel centres of every level in [0, 1] (no padding masks: all positions are valid)."""
        points = []
        for height, width in spatial_shapes:
            ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
            xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1))
        points = torch.cat(points, dim=0)  # (sum HW, 2)
        return points[None, :, None, :].expand(1, -1, len(spatial_shapes), 2)

    def forward_features(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        sources, positions, spatial_shapes = [], [], []
        for level, name in enumerate(self.transformer_in_features):
            projected = self.input_proj[level](features[name])
            spatial_shapes.append(tuple(projected.shape[-2:]))
            positions.append((self.position_encoding(projected).flatten(2).transpose(1, 2) + self.level_embed[level]))
            sources.append(projected.flatten(2).transpose(1, 2))
        src = torch.cat(sources, dim=1)
        pos = torch.cat(positions, dim=1)
        reference_points = self._reference_points(spatial_shapes, src.device).expand(src.shape[0], -1, -1, -1)
        for layer in self.encoder_layers:
            src = layer(src, pos, reference_points, spatial_shapes)

        batch = src.shape[0]
        outputs = [
            level_src.transpose(1, 2).reshape(batch, -1, height, width)
            for level_src, (height, width) in zip(src.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes)
        ]
        # FPN: add the finer backbone levels top-down (features are ordered coarse to fine).
        finer = outputs[-1]
        for name, lateral_conv, output_conv in zip(self.fpn_features, self.lateral_convs, self.output_convs):
            lateral = lateral_conv(features[name])
            finer = output_conv(lateral + F.interpolate(finer, size=lateral.shape[-2:], mode="bilinear", align_corners=False))
        multi_scale_features = outputs[: self.maskformer_num_feature_levels]
        return self.mask_features(finer), multi_scale_features
