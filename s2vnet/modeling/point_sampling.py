"""Point sampling for the mask losses and the matching costs (PointRend, used by Mask2Former).

Design followed: PointRend's point sampling (Kirillov et al. 2020), as used by Mask2Former; written for this project, no code copied.

Mask losses are computed on P sampled points per mask instead of every pixel: most of them where
the prediction is uncertain (logit near 0), the rest uniformly at random. This keeps the memory of
the losses independent of the input size (Mask2Former §3.2, "Improving training efficiency").
"""
import torch
import torch.nn.functional as F


def point_sample(features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``features`` (N, C, H, W) at ``coords`` (N, P, 2), (x, y) in [0, 1].

    Returns (N, C, P). Coordinates are in the pixel-centre convention (align_corners=False), so one
    coordinate means the same place on maps of any resolution covering the same image.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (N, P, 1, 2)
    return F.grid_sample(features, grid.to(features.dtype), mode="bilinear", align_corners=False).squeeze(3)


@torch.no_grad()
def uncertain_point_coords(
    mask_logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> torch.Tensor:
    """Choose ``num_points`` points per mask of ``mask_logits`` (N, 1, H, W); returns (N, P, 2).

    ``oversample_ratio * num_points`` candidates are drawn uniformly; the
    ``importance_sample_ratio`` share of points are the most uncertain candidates (smallest
    |logit|), the rest are drawn uniformly again for coverage.
    """
    num_masks = mask_logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(num_masks, num_candidates, 2, device=mask_logits.device)
    uncertainty = -point_sample(mask_logits.float(), candidates).abs().squeeze(1)  # (N, candidates)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    top = uncertainty.topk(num_uncertain, dim=1).indices
    coords = torch.gather(candidates, 1, top[:, :, None].expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(num_masks, num_random, 2, device=mask_logits.device)], dim=1)
    return coords
