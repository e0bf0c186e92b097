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
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from s2vnet.modeling.layers import MLP
from s2vnet.modeling.structures import CentroidOrigin, Tracks


@dataclass(frozen=True)
class PropagationSettings:
    """How centroids travel from slice to slice (``MODEL.S2VNET.PROPAGATION``), read by training,
    automatic inference and interactive sessions alike."""

    enabled: bool = True  # hand centroids over at all (False: the 2D baseline)
    score_threshold: float = 0.5  # inference: class probability a centroid needs to be handed over
    detach: bool = False  # training: stop gradients at the hand-over between slices of a clip

    @classmethod
    def from_config(cls, cfg) -> "PropagationSettings":
        p = cfg.MODEL.S2VNET.PROPAGATION
        return cls(enabled=p.ENABLED, score_threshold=p.SCORE_THRESHOLD, detach=p.DETACH)


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
    origins: Optional[List[CentroidOrigin]] = None,
) -> Tracks:
    """Eq. 6 (+ eqs. 10-11): turn this slice's selected centroids into the next slice's queries.

    Args:
        centroids: (E, D) decoded centroids C_hat^t of the identities that continue.
        memory: (E, M, D) their memories H^{t-1} (rows of newly born identities hold the learned
            initial memory), or None when aggregation is off.
        detach: stop gradients at the hand-over (``MODEL.S2VNET.PROPAGATION.DETACH``).
        origins: where each identity was started (kept for as long as it lives).
    """
    if detach:
        centroids = centroids.detach()
        memory = None if memory is None else memory.detach()
    if aggregator is None:
        return Tracks(centroids, labels, batch_index, None, list(origins or []))
    next_queries, next_memory = aggregator(centroids, memory)
    return Tracks(next_queries, labels, batch_index, next_memory, list(origins or []))


def empty_tracks(dim: int, device, aggregator: Optional[RecurrentCentroidAggregator], dtype=torch.float32) -> Tracks:
    """No identities (the first slice of a sweep), shaped for ``aggregator``'s memory."""
    return Tracks.empty(dim, device, None if aggregator is None else aggregator.memory_slots, dtype)


def training_hand_over(
    outputs: Dict[str, torch.Tensor],
    matches: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    segment_labels: Sequence[torch.Tensor],
    tracks: Tracks,
    num_learnable: int,
    aggregator: Optional[RecurrentCentroidAggregator],
    detach: bool = False,
) -> Tracks:
    """Eq. 5 (training's continuation rule), then eq. 6: the identities of the next slice of a clip.

    Identity queries matched to a segment of their class continue; learnable queries matched to a
    foreground class nobody carries yet start new identities; background is never handed over by
    the learnable queries. All of them pass through the aggregator.

    Args:
        outputs: the slice's decoder outputs (``query_embeddings``, ``track_slot``).
        matches: per clip, the (query rows, segment indices) of the Hungarian matching.
        segment_labels: per clip, the class of each ground-truth segment of the slice.
        tracks: the identities this slice was decoded with.
        num_learnable: N, the number of learnable queries (rows N.. are the tracks' slots).
    """
    device = outputs["query_embeddings"].device
    continuing_rows, new_rows, new_labels = [], [], []
    slot = outputs["track_slot"]
    for b, (queries, segments) in enumerate(matches):
        pairs = list(zip(queries.tolist(), segments.tolist()))
        for q, s in pairs:
            if q >= num_learnable:
                # Which track sits in slot q - N of batch element b.
                track = int(((tracks.batch_index == b) & (slot == q - num_learnable)).nonzero()[0, 0])
                continuing_rows.append((b, q, track))
        tracked = {int(tracks.labels[t]) for bb, _, t in continuing_rows if bb == b}
        for q, s in pairs:
            label = int(segment_labels[b][s])
            # A class already carried by a continuing identity keeps that one (and its memory).
            if q < num_learnable and label != 0 and label not in tracked:
                new_rows.append((b, q))
                new_labels.append(label)
    embeddings = outputs["query_embeddings"]
    index_b = [b for b, _, _ in continuing_rows] + [b for b, _ in new_rows]
    index_q = [q for _, q, _ in continuing_rows] + [q for _, q in new_rows]
    centroids = embeddings[torch.tensor(index_b, dtype=torch.long), torch.tensor(index_q, dtype=torch.long)]
    labels = torch.tensor([int(tracks.labels[t]) for _, _, t in continuing_rows] + new_labels, dtype=torch.int64, device=device)
    batch_index = torch.tensor(index_b, dtype=torch.int64, device=device)
    memory = None
    if aggregator is not None:
        # H^{t-1}: the carried memory of continuing identities, the learned empty history of new ones.
        carried = tracks.memory[torch.tensor([t for _, _, t in continuing_rows], dtype=torch.long)]
        memory = torch.cat([carried, aggregator.initial(len(new_rows)).to(carried.dtype)])
    origins = [tracks.origins[t] for _, _, t in continuing_rows] + [CentroidOrigin.LEARNABLE] * len(new_rows)
    return hand_over(centroids, labels, batch_index, memory, aggregator, detach, origins)


def inference_hand_over(
    outputs: Dict[str, torch.Tensor],
    tracks: Tracks,
    num_learnable: int,
    aggregator: Optional[RecurrentCentroidAggregator],
    score_threshold: float,
    spawn_new: bool = True,
) -> Tracks:
    """The continuation rule at inference, then eq. 6: the identities of the next slice of a sweep.

    Used by automatic inference and by interactive sessions alike: changing how centroids are
    handed over at test time is a change here.

    Identities whose class is still predicted with probability >= ``score_threshold`` continue;
    with ``spawn_new``, learnable queries confidently predicting a foreground class nobody tracks
    yet start new identities (one per class, the most confident). Background and "no object" are
    never handed over by learnable queries. A centroid whose cluster is empty (no pixel with mask
    probability >= 0.5) is not handed over, however confident its class: k-means drops empty
    clusters, and an empty centroid carried on through slices without its organ would resurface as
    a false positive.

    Args:
        outputs: the decoder outputs of ONE slice (batch of 1) decoded with ``tracks``.
    """
    probs = outputs["pred_logits"][0].float().softmax(-1)  # (Q, K+1)
    non_empty = (outputs["pred_masks"][0] > 0).flatten(1).any(1)  # sigmoid >= 0.5 somewhere
    embeddings = outputs["query_embeddings"][0]
    slot = outputs["track_slot"]
    keep = []
    if len(tracks):
        rows_of_tracks = num_learnable + slot
        alive = (probs[rows_of_tracks, tracks.labels] >= score_threshold) & non_empty[rows_of_tracks]
        keep = alive.nonzero().flatten().tolist()
    rows = [num_learnable + int(slot[e]) for e in keep]
    labels = [int(tracks.labels[e]) for e in keep]
    origins = [tracks.origins[e] for e in keep]
    num_new = 0
    if spawn_new:
        background, no_object = 0, probs.shape[1] - 1
        best, classes = probs[:num_learnable].max(-1)
        order = torch.argsort(best, descending=True).tolist()
        # Python lists: this loop runs on every decoded slice, and indexing tensors one element at a
        # time cost more than the decode's attention. The threshold test stays one tensor
        # comparison, in the probabilities' own precision.
        below, classes, query_non_empty = (best < score_threshold).tolist(), classes.tolist(), non_empty[:num_learnable].tolist()
        tracked = set(labels)
        for q in order:
            c = classes[q]
            if below[q]:
                break
            if c in (background, no_object) or c in tracked or not query_non_empty[q]:
                continue
            tracked.add(c)
            rows.append(q)
            labels.append(c)
            origins.append(CentroidOrigin.LEARNABLE)
            num_new += 1
    device = embeddings.device
    if not rows:
        return empty_tracks(embeddings.shape[-1], device, aggregator, embeddings.dtype)
    memory = None
    if aggregator is not None:
        carried = tracks.memory[torch.tensor(keep, dtype=torch.long, device=device)] if keep else tracks.memory[:0]
        memory = torch.cat([carried.to(embeddings.dtype), aggregator.initial(num_new).to(embeddings.dtype)])
    return hand_over(
        embeddings[torch.tensor(rows, dtype=torch.long, device=device)],
        torch.tensor(labels, dtype=torch.int64, device=device),
        torch.zeros(len(rows), dtype=torch.int64, device=device),
        memory,
        aggregator,
        origins=origins,
    )


def add_click_tracks(tracks: Tracks, clicked: Tracks) -> Tracks:
    """Start click-initialised identities on a slice that ``tracks`` already reach (interactive
    sessions): a click centroid takes over its class's identity from a learnable-query track, and
    click tracks of earlier clicks live on beside it."""
    clicked_classes = set(clicked.labels.tolist())
    keep = [
        e for e, (label, origin) in enumerate(zip(tracks.labels.tolist(), tracks.origins))
        if label not in clicked_classes or origin is CentroidOrigin.CLICK
    ]
    return Tracks.cat([tracks.select(torch.tensor(keep, dtype=torch.long)), clicked])
