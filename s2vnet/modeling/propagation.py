"""Slice-to-volume propagation of cluster centres (eqs. 4-6) and recurrent aggregation (eqs. 10-11).

After slice t is decoded, the centroids of foreground identities are handed to slice t+1 as extra
queries (eq. 6): in training the queries matched to foreground ground truth (eq. 5), at inference
the queries predicted as a foreground class with enough confidence. Each handed-over centroid
keeps its *identity* (the class it stands for) for as long as it lives.

With aggregation on, every identity also carries a memory H that recurrently summarises all its
earlier centroids (eq. 10), and the query handed to the next slice reads from it (eq. 11):

    H^t     = FFN(SelfAttn([H^{t-1}; C_hat^t]))          (eq. 10)
    C^{t+1} = C_hat^t + CrossAttn(C_hat^t, H^{t-1})       (eq. 11)

The memory has a fixed number of slots per identity, so the cost per slice is O(1): no memory
bank grows with the number of slices. With one slot (the paper's single fused vector) the
cross-attention has a single key, so its softmax is 1 and it reduces to a learned projection of H;
``MEMORY_SLOTS > 1`` gives it something to choose between.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import nn

from s2vnet.modeling.transformer_decoder.kmeans_decoder import MLP


@dataclass
class Tracks:
    """Identity-carrying queries for the next slice, for a batch of clips (or one volume).

    Attributes:
        queries: (E, D) the initial cluster centres for the next slice.
        labels: (E,) the class each centroid stands for (its identity).
        batch_index: (E,) which batch element (clip) each belongs to.
        memory: (E, M, D) aggregation memory H, or None when aggregation is off.
        keys: one key per track for the caller's bookkeeping (e.g. which click started it; None
            for identities the learnable queries started).
    """

    queries: torch.Tensor
    labels: torch.Tensor
    batch_index: torch.Tensor
    memory: Optional[torch.Tensor] = None
    keys: List[object] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.keys) != len(self):  # one key per track, None where the caller keeps none
            self.keys = list(self.keys) + [None] * (len(self) - len(self.keys))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def empty(dim: int, device, memory_slots: Optional[int] = None, dtype=torch.float32) -> "Tracks":
        memory = None if memory_slots is None else torch.zeros(0, memory_slots, dim, device=device, dtype=dtype)
        return Tracks(
            queries=torch.zeros(0, dim, device=device, dtype=dtype),
            labels=torch.zeros(0, dtype=torch.int64, device=device),
            batch_index=torch.zeros(0, dtype=torch.int64, device=device),
            memory=memory,
        )

    def select(self, index: torch.Tensor) -> "Tracks":
        memory = None if self.memory is None else self.memory[index]
        return Tracks(self.queries[index], self.labels[index], self.batch_index[index], memory, [self.keys[i] for i in index.tolist()])

    @staticmethod
    def cat(parts: List["Tracks"]) -> "Tracks":
        parts = [p for p in parts if p is not None]
        memory = None if parts[0].memory is None else torch.cat([p.memory for p in parts])
        return Tracks(
            torch.cat([p.queries for p in parts]),
            torch.cat([p.labels for p in parts]),
            torch.cat([p.batch_index for p in parts]),
            memory,
            [k for p in parts for k in p.keys],
        )

    def padded(self, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scatter the tracks into a padded (B, E_max, D) batch of extra queries.

        Returns ``(extra_queries, padding_mask, slot)``, where ``slot[e]`` is track e's position
        among its batch element's extra queries (its query index is N + slot[e]).
        """
        device = self.queries.device
        counts = torch.bincount(self.batch_index, minlength=batch_size)
        max_count = int(counts.max()) if len(self) else 0
        # Slot of each track among the tracks of its batch element, in the order given.
        order = torch.argsort(self.batch_index, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(self.batch_index)
        slot[order] = torch.arange(len(self), device=device) - starts[self.batch_index[order]]
        extra = self.queries.new_zeros(batch_size, max_count, self.queries.shape[1])
        padding = torch.ones(batch_size, max_count, dtype=torch.bool, device=device)
        # index_put keeps the autograd graph: gradients flow back into each track's query.
        extra = extra.index_put((self.batch_index, slot), self.queries)
        padding[self.batch_index, slot] = False
        return extra, padding, slot


class RecurrentCentroidAggregator(nn.Module):
    """Per-identity memory H and its read/write (eqs. 10-11), O(1) per slice."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, memory_slots: int = 1):
        super().__init__()
        self.memory_slots = memory_slots
        # H^{t0-1} of an identity born on slice t0: a learned "empty history".
        self.initial_memory = nn.Parameter(torch.randn(memory_slots, d_model) * 0.02)
        self.write_attn = nn.MultiheadAttention(d_model, nheads, batch_first=True)
        self.write_norm = nn.LayerNorm(d_model)
        self.write_ffn = MLP(d_model, dim_feedforward, d_model, 2)
        self.write_ffn_norm = nn.LayerNorm(d_model)
        self.read_attn = nn.MultiheadAttention(d_model, nheads, batch_first=True)

    def initial(self, count: int) -> torch.Tensor:
        return self.initial_memory[None].expand(count, -1, -1)

    def read(self, centroids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Eq. 11: C^{t+1} = C_hat^t + CrossAttn(C_hat^t, H^{t-1}). centroids (E, D), memory (E, M, D)."""
        attended = self.read_attn(centroids[:, None], memory, memory, need_weights=False)[0][:, 0]
        return centroids + attended

    def write(self, memory: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Eq. 10: H^t = FFN(SelfAttn([H^{t-1}; C_hat^t])), keeping the M memory positions."""
        tokens = torch.cat([memory, centroids[:, None]], dim=1)  # (E, M+1, D)
        attended = self.write_norm(tokens + self.write_attn(tokens, tokens, tokens, need_weights=False)[0])
        slots = attended[:, : self.memory_slots]
        return self.write_ffn_norm(slots + self.write_ffn(slots))

    def forward(self, centroids: torch.Tensor, memory: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One recurrence step: (next slice's queries, updated memory)."""
        return self.read(centroids, memory), self.write(memory, centroids)


def hand_over(
    centroids: torch.Tensor,
    labels: torch.Tensor,
    batch_index: torch.Tensor,
    memory: Optional[torch.Tensor],
    aggregator: Optional[RecurrentCentroidAggregator],
    detach: bool = False,
    keys: Optional[list] = None,
) -> Tracks:
    """Eq. 6 (+ eqs. 10-11): turn this slice's selected centroids into the next slice's queries.

    Args:
        centroids: (E, D) decoded centroids C_hat^t of the identities that continue.
        memory: (E, M, D) their memories H^{t-1} (rows of newly born identities hold the learned
            initial memory), or None when aggregation is off.
        detach: stop gradients at the hand-over (``MODEL.S2VNET.PROPAGATION.DETACH``).
    """
    if detach:
        centroids = centroids.detach()
        memory = None if memory is None else memory.detach()
    if aggregator is None:
        return Tracks(centroids, labels, batch_index, None, list(keys or []))
    next_queries, next_memory = aggregator(centroids, memory)
    return Tracks(next_queries, labels, batch_index, next_memory, list(keys or []))
