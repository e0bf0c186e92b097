"""Hungarian matching of the learnable queries to ground-truth segments (paper eq. 5).

Design followed: Mask2Former's point-sampled Hungarian matcher (Cheng et al. 2022); written for this project, no code copied.

The cost of assigning query q to segment s is Mask2Former's: class cost (minus the predicted
probability of s's class) plus mask binary cross-entropy and dice costs, both computed on the same
random points for all pairs. Identity-carrying (extra) queries are not matched here: their target
is fixed by their identity, and the segments they cover are removed before matching (see
:mod:`s2vnet.modeling.criterion`).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from s2vnet.modeling.point_sampling import point_sample


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean (over valid points) binary cross-entropy of every prediction against every target.

    logits (Q, P), targets (S, P) in {0, 1}, weights (P,) in {0, 1} (ignored points are 0).
    Returns (Q, S).
    """
    positive = F.softplus(-logits) * weights  # the loss where the target is 1
    negative = F.softplus(logits) * weights  # the loss where the target is 0
    total = weights.sum().clamp(min=1.0)
    return (positive @ targets.T + negative @ (1.0 - targets).T) / total


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """1 - soft dice of every prediction against every target (valid points only). Returns (Q, S)."""
    probs = logits.sigmoid() * weights
    targets = targets * weights
    numerator = 2.0 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544):
        super().__init__()
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        target_labels: torch.Tensor,
        target_masks: torch.Tensor,
        valid: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Match Q predictions of one slice to its S segments.

        Args:
            pred_logits (Q, K+1); pred_masks (Q, h, w) logits; target_labels (S,);
            target_masks (S, H, W) in {0, 1}; valid (H, W) in {0, 1} (0 = ignored pixel).
        Returns:
            (query_indices, segment_indices), each (min(Q, S),), int64.
        """
        device = pred_logits.device
        empty = torch.empty(0, dtype=torch.int64, device=device)
        if target_labels.numel() == 0 or pred_logits.shape[0] == 0:
            return empty, empty
        cost_class = -pred_logits.float().softmax(-1)[:, target_labels]
        coords = torch.rand(1, self.num_points, 2, device=device)
        pred_points = point_sample(pred_masks[None].float(), coords)[0]  # (Q, P)
        target_points = point_sample(target_masks[None].float(), coords)[0]  # (S, P)
        weights = point_sample(valid[None, None].float(), coords)[0, 0]  # (P,)
        weights = (weights > 0.5).float()  # a point counts if it lies (mostly) on valid pixels
        cost = (
            self.cost_class * cost_class
            + self.cost_mask * pairwise_sigmoid_ce(pred_points, target_points, weights)
            + self.cost_dice * pairwise_dice(pred_points, target_points, weights)
        )
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.int64, device=device), torch.as_tensor(cols, dtype=torch.int64, device=device)
