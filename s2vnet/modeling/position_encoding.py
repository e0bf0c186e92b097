"""Sine positional encoding of a feature map (DETR / Mask2Former).

Design followed: DETR's sine position encoding (Carion et al. 2020), as used by Mask2Former; written for this project, no code copied.

The paper keeps the positional encoding of the transformer "to help capture the location of
diseases" (§3.3). Positions are normalised to [0, scale] over the map (scale = 2*pi by default, so the fastest
sinusoid makes one period across the map), so the code of a pixel does not depend on the
resolution of the level it sits on.
"""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale
        # The code depends only on the map's size: computed once per (size, device, dtype). The
        # decoder asks for it on every slice of every volume.
        self._cache = {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, 2 * num_pos_feats, H, W), same dtype and device as x."""
        batch, _, height, width = x.shape
        key = (height, width, x.device, x.dtype)
        if key not in self._cache:
            if len(self._cache) > 16:
                self._cache.clear()
            # A normal tensor even when first asked for under inference_mode, so that training
            # (which cannot use inference tensors in autograd) may share the cache.
            with torch.inference_mode(False):
                self._cache[key] = self._encode(height, width, x.device).to(x.dtype)
        return self._cache[key][None].expand(batch, -1, -1, -1)

    def encode_points(self, points: torch.Tensor) -> torch.Tensor:
        """Codes of points (K, 2) given as (y, x) in [0, 1] of the image: (K, 2 * num_pos_feats),
        on the same scale as the map codes (a map pixel's code is that of its position)."""
        scale = self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=points.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = points[:, 0:1].float() * scale / dim_t
        pos_x = points[:, 1:2].float() * scale / dim_t
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=-1).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=-1).flatten(1)
        return torch.cat((pos_y, pos_x), dim=-1)

    def _encode(self, height: int, width: int, device) -> torch.Tensor:
        eps, scale = 1e-6, self.scale
        y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        y_embed = (y_embed / (height + eps) * scale)[:, None].expand(height, width)
        x_embed = (x_embed / (width + eps) * scale)[None, :].expand(height, width)
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(2)
        return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).contiguous()
