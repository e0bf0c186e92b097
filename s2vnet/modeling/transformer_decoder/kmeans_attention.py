"""k-means cross-attention (paper eqs. 2-3, after kMaX-DeepLab, Yu et al. 2022).

Design followed: kMaX-DeepLab's k-means cross-attention (Yu et al. 2022); written for this project, no code copied.

Standard cross-attention (eq. 1) normalises attention over pixels (softmax over HW), so each query
softly attends to every pixel. k-means cross-attention instead normalises over *queries*, and hard:
every pixel is assigned to the one query whose mask logit is largest there (the assignment step,
argmax over N), and each query is then moved by the SUM of the values of its pixels (the update
step). The queries are thus cluster centres and the layer one step of k-means.

The assignment uses the queries' current mask logits (query mask embedding . pixel feature, i.e.
Q K^T of eq. 2). It is a hard one-hot computed without gradient: the mask logits that drive it are
trained by deep supervision instead (every layer's prediction gets the full loss). The sum of
values grows with the size of the cluster, so it is normalised (LayerNorm) before the residual,
as kMaX does with a BatchNorm. Assignment and update run in fp32 even under autocast: the sum over
up to 10^5 pixels loses precision in half precision.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from s2vnet.modeling.layers import xavier_init_


@torch.no_grad()
def kmeans_assignment(mask_logits: torch.Tensor, query_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Assignment step of eq. 3: A = one_hot(argmax_N(mask_logits)).

    Args:
        mask_logits: (B, N, HW) logits of every query at every pixel.
        query_padding_mask: (B, N), True where a query is padding (never assigned any pixel).
    Returns:
        A: (B, N, HW) float32 one-hot over the query axis (each pixel belongs to exactly one query).
    """
    logits = mask_logits.float()
    if query_padding_mask is not None:
        logits = logits.masked_fill(query_padding_mask[:, :, None], float("-inf"))
    winner = logits.argmax(dim=1, keepdim=True)  # (B, 1, HW)
    return torch.zeros_like(logits).scatter_(1, winner, 1.0)


def kmeans_update(assignment: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Update step of eq. 3 before normalisation: C_hat = A V, the SUM of each cluster's values.

    Args:
        assignment: (B, N, HW) one-hot from :func:`kmeans_assignment`.
        values: (B, HW, D) pixel values.
    Returns:
        (B, N, D) float32.
    """
    with torch.autocast(device_type=values.device.type, enabled=False):
        return torch.bmm(assignment.float(), values.float())


class KMeansCrossAttention(nn.Module):
    """C <- Norm(C + Proj(Norm(A V))): one k-means step of the queries over one memory level (eq. 2)."""

    def __init__(self, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.value_proj = nn.Linear(d_model, d_model)
        self.update_norm = nn.LayerNorm(d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        xavier_init_(self.value_proj, self.output_proj)

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        mask_logits: torch.Tensor,
        query_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """queries (B, N, D); memory, memory_pos (B, HW, D); mask_logits (B, N, HW) at the memory's resolution.

        The value carries the pixel's positional code as well as its feature, so that a cluster
        centre also summarises *where* its pixels are; the paper keeps positional encodings "to
        help capture the location" (§3.3), and this is what the next slice's query inherits.
        """
        assignment = kmeans_assignment(mask_logits, query_padding_mask)
        update = self._project_cluster_sums(assignment, kmeans_update(assignment, memory + memory_pos)).to(queries.dtype)
        update = self.output_proj(self.update_norm(update))
        return self.norm(queries + self.dropout(update))

    def _project_cluster_sums(self, assignment: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
        """Eq. 3's A V with V = value_proj(memory + pos), from the cluster sums A (memory + pos).

        value_proj is affine, so A V = (A X) W^T + |cluster| b: projecting the N cluster sums costs
        N D^2 instead of projecting every memory pixel, HW D^2 (HW is up to 4096 at 512 x 512, N
        about 100), the same numbers up to rounding. In fp32, like the sums.
        """
        counts = assignment.sum(-1, keepdim=True)  # (B, N, 1) pixels per cluster
        with torch.autocast(device_type=sums.device.type, enabled=False):
            return F.linear(sums, self.value_proj.weight.float()) + counts * self.value_proj.bias.float()
