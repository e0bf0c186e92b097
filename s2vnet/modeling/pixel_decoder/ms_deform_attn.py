"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in pure PyTorch.

Design followed: Deformable DETR's multi-scale deformable attention (Zhu et al. 2021), as used by Mask2Former; written for this project, no code copied.

Each query attends to ``n_points`` sampled locations per head and per feature level around its
reference point; sampling offsets and attention weights are predicted from the query. The sampling
is ``torch.nn.functional.grid_sample``, so the module runs on any device without a compiled
kernel. The bilinear sampling runs in fp32 even under autocast: offsets are fractions of a pixel
and half precision visibly shifts them.
"""
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from s2vnet.modeling.layers import xavier_init_


def multi_scale_deformable_sample(
    value: torch.Tensor,
    spatial_shapes: List[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Attention-weighted sum of bilinear samples from several feature levels.

    Args:
        value: (B, sum(H_l * W_l), heads, head_dim), the levels flattened one after the other.
        spatial_shapes: (H_l, W_l) of each level, in the order of ``value``.
        sampling_locations: (B, Q, heads, levels, points, 2) as (x, y) in [0, 1] of each level.
        attention_weights: (B, Q, heads, levels, points), softmax-normalised over levels x points.
    Returns:
        (B, Q, heads * head_dim)
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample wants coordinates in [-1, 1] with align_corners=False (pixel-centre convention).
    grids = 2.0 * sampling_locations - 1.0
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, H*W, heads, hd) -> (B*heads, hd, H, W)
        level_value = value_per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # (B, Q, heads, points, 2) -> (B*heads, Q, points, 2)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*heads, hd, Q, points)
    # (B*heads, hd, Q, levels*points) weighted by (B*heads, 1, Q, levels*points)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, levels * points)
    output = (stacked * weights).sum(-1).view(batch, heads * head_dim, num_queries)
    return output.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with learned offsets and weights (Deformable DETR, eq. 3)."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start as a ring: head h looks in direction 2*pi*h/heads, point p at distance p+1, so
        # that at initialisation the heads cover the neighbourhood evenly (Deformable DETR's scheme).
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        ring = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        ring = ring * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        xavier_init_(self.value_proj, self.output_proj)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: List[Tuple[int, int]],
    ) -> torch.Tensor:
        """query (B, Q, D); reference_points (B, Q, levels, 2) in [0, 1]; value_input (B, sum HW, D)."""
        batch, num_queries, _ = query.shape
        value = self.value_proj(value_input).view(batch, value_input.shape[1], self.n_heads, -1)
        offsets = self.sampling_offsets(query).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of each level: normalise by that level's (W, H).
        normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.float32, device=query.device)
        locations = reference_points[:, :, None, :, None, :].float() + offsets.float() / normaliser[None, None, None, :, None, :]
        with torch.autocast(device_type=query.device.type, enabled=False):
            output = multi_scale_deformable_sample(value.float(), spatial_shapes, locations, weights.float())
        return self.output_proj(output.to(query.dtype))
