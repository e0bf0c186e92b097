"""Interaction-aware cluster-centre initialisation (eqs. 7-9).

A click (slice t, pixel P, class c) becomes a cluster centre of class c: the backbone features of
slice t are sampled bilinearly at P and projected to the query width by an FFN (eq. 7). Negative
clicks are clicks of the background class (label 0), which is a real class here. Across refinement
rounds the sampled feature of a class accumulates with geometric decay (adaptive sampling, eq. 8),
every round adds a new centroid of that class, and the rounds' predictions are fused by taking the
maximum of mask score x class score (eq. 9). The backbone features are the same in every round,
so they are computed once per volume.
"""
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from s2vnet.modeling.layers import MLP
from s2vnet.modeling.point_sampling import point_sample
from s2vnet.modeling.position_encoding import PositionEmbeddingSine
from s2vnet.modeling.postprocess import class_score_maps
from s2vnet.modeling.structures import SliceFeatures


@dataclass(frozen=True)
class InteractionSettings:
    """How clicks become cluster centres (``MODEL.S2VNET.INTERACTION``), read by training and by
    interactive sessions alike."""

    beta: float = 0.8  # eq. 8: weight of earlier rounds' features
    adaptive_sampling: bool = True  # eq. 8 on (False: each round uses only its own clicks)
    max_clicks_per_class: int = 20  # cluster centres reserved per class for clicks (sessions: rounds per class)

    @classmethod
    def from_config(cls, cfg) -> "InteractionSettings":
        i = cfg.MODEL.S2VNET.INTERACTION
        return cls(beta=i.BETA, adaptive_sampling=i.ADAPTIVE_SAMPLING, max_clicks_per_class=i.MAX_CLICKS_PER_CLASS)


class ClickEncoder(nn.Module):
    """Eq. 7: C_hat_k = FFN(O_k) + E_c, O_k = Sample(F_{t_k}, P_k), with F the backbone features.

    E_c is a learned embedding of the clicked class c. The paper reserves cluster centres per
    class ("20 cluster centers for each semantic class, with each click serving as the trigger
    to initialize one of them", §3.3), so a click initialises a centre *of its class*: the
    centre knows which class it stands for, not only what the clicked pixel looks like. Without
    it a corrective click could not work: a false positive looks like the organ the model took it
    for, and a centroid made from its appearance alone decodes as that organ again, not as the
    background the user clicked. The class is shared by all of its reserved centres (one
    embedding per class, not per slot), so centres of late rounds, rarely seen in training, are
    as well trained as the first.

    With ``use_position`` the FFN also sees the sine position code of the click (the code the
    decoder's pixel values carry): the sampled feature says what the clicked structure looks
    like, the code says where it is, which a small organ among look-alike tissue needs. The
    position is not part of eq. 8's accumulation: each round's centroid takes the accumulated
    appearance O_hat and the position of its own click.
    """

    def __init__(
        self,
        in_features: Sequence[str],
        in_channels: Dict[str, int],
        hidden_dim: int,
        d_model: int,
        num_classes: int,
        use_position: bool = True,
    ):
        super().__init__()
        self.in_features = list(in_features)
        self.feature_dim = sum(in_channels[name] for name in self.in_features)
        # Backbone levels differ in scale by orders of magnitude; normalising the concatenated sample
        # keeps the FFN's input well conditioned (and the eq. 8 sums comparable across rounds).
        self.norm = nn.LayerNorm(self.feature_dim)
        self.position_encoding = PositionEmbeddingSine(d_model // 2) if use_position else None
        self.ffn = MLP(self.feature_dim + (d_model if use_position else 0), hidden_dim, d_model, 2)
        self.class_embed = nn.Embedding(num_classes, d_model)

    def sample(
        self, features: Dict[str, torch.Tensor], batch_index: torch.Tensor, points: torch.Tensor, image_size: Tuple[int, int]
    ) -> torch.Tensor:
        """O_k: backbone features at the clicks, concatenated over ``in_features``.

        Args:
            features: backbone maps (B, C, H/s, W/s) covering the (padded) input of size ``image_size``.
            batch_index: (K,) which slice of the batch each click is on.
            points: (K, 2) click pixels as (y, x) in input-pixel indices.
        Returns:
            (K, sum of channels), float32.
        """
        # Pixel centres in [0, 1], (x, y) order as point_sample wants.
        coords = self.normalized_positions(points, image_size).flip(-1)
        samples = []
        for name in self.in_features:
            level = features[name][batch_index].float()  # (K, C, h, w)
            samples.append(point_sample(level, coords[:, None]).squeeze(-1))  # (K, C)
        return torch.cat(samples, dim=1)

    def forward(self, sampled: torch.Tensor, labels: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Project sampled (or eq. 8-accumulated) features O (K, C) of clicks of class ``labels``
        (K,) to centroids (K, D).

        ``positions`` (K, 2): each click's (y, x) in [0, 1] of the image (needed with ``use_position``).
        """
        inputs = self.norm(sampled)
        if self.position_encoding is not None:
            inputs = torch.cat([inputs, self.position_encoding.encode_points(positions).to(inputs.dtype)], dim=1)
        centroids = self.ffn(inputs)
        return centroids + self.class_embed(labels).to(centroids.dtype)

    @staticmethod
    def normalized_positions(points: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """Pixel indices (K, 2) as (y, x) -> pixel centres in [0, 1] of an image of ``image_size``."""
        height, width = image_size
        return torch.stack([(points[:, 0].float() + 0.5) / height, (points[:, 1].float() + 0.5) / width], dim=-1)


def adaptive_feature(new_feature: torch.Tensor, previous: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 8: O_hat^r = O^r + beta * O_hat^{r-1} (so O_hat^r = sum_i beta^(r-i) O^i)."""
    return new_feature + beta * previous


def accumulate_round(
    state: Dict[Hashable, torch.Tensor],
    keys: Sequence[Hashable],
    features: torch.Tensor,
    beta: float,
    adaptive: bool = True,
) -> Dict[Hashable, torch.Tensor]:
    """One refinement round of eq. 8 for every class clicked in it.

    A class gets ONE new cluster centre per round (the paper's 20 centres per class are 20
    rounds): the round's O^r of a class is the mean feature of its clicks in that round (the
    protocol gives one click per class and round; a user, or the negative clicks correcting
    several organs at once, may give more). With ``adaptive`` it is then added to beta times the
    class's previous O_hat; without, it replaces it.

    Args:
        state: O_hat^{r-1} per key (a class, or (clip, class) in training); not modified.
        keys: the key of each click of this round; features: (K, C) their sampled features.
    Returns:
        O_hat^r of every key clicked in this round.
    """
    grouped: Dict[Hashable, List[int]] = {}
    for row, key in enumerate(keys):
        grouped.setdefault(key, []).append(row)
    updated = {}
    for key, rows in grouped.items():
        feature = features[rows].mean(0)
        updated[key] = adaptive_feature(feature, state[key], beta) if adaptive and key in state else feature
    return updated


@dataclass
class AccumulatedClicks:
    """One round of clicks after eqs. 7-8: the accumulated feature O_hat of every key clicked in it,
    and each click's position (y, x) in [0, 1] of the input (its centroid's position code)."""

    features: Dict[Hashable, torch.Tensor]
    positions: torch.Tensor  # (K, 2), one row per click, in the order given


def accumulate_clicks(
    encoder: ClickEncoder,
    features: SliceFeatures,
    batch_index: torch.Tensor,
    points: torch.Tensor,
    keys: Sequence[Hashable],
    state: Dict[Hashable, torch.Tensor],
    settings: InteractionSettings,
) -> AccumulatedClicks:
    """Click -> centroid input for one round (eq. 7's sampling O_k, eq. 8's accumulation), the one
    place training's simulated clicks and interactive sessions turn clicks into features.

    The centroid itself is ``encoder(O_hat, label, position)`` (eq. 7's FFN + class embedding).

    Args:
        features: the encoded slices the clicks lie on (their ``click_features``).
        batch_index: (K,) the slice of ``features`` each click is on; points: (K, 2) its (y, x)
            pixel on the network input grid.
        keys: per click, whose O_hat it accumulates into (a class; (clip, class) in training).
        state: O_hat^{r-1} per key (not modified).
    """
    sampled = encoder.sample(features.click_features, batch_index, points, features.input_size)
    accumulated = accumulate_round(state, keys, sampled, settings.beta, settings.adaptive_sampling)
    return AccumulatedClicks(accumulated, encoder.normalized_positions(points, features.input_size))


def fuse_rounds(round_scores: torch.Tensor) -> torch.Tensor:
    """Eq. 9: M_hat = max over rounds r of (M^r * c^r), given the products stacked on dim 0."""
    return round_scores.amax(dim=0)


def fuse_identity_scores(class_scores: torch.Tensor, identity_scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 9 on one slice: each class's round-0 score map max-fused with the scores of the identity
    queries of that class (click centroids, or any later round's centres).

    class_scores (K, h, w), identity_scores (E, h, w), labels (E,) -> (K, h, w), a new tensor; a
    gradient reaches whichever input wins at each pixel.
    """
    per_class = list(class_scores.unbind(0))
    for c in labels.unique().tolist():
        per_class[c] = fuse_rounds(torch.cat([per_class[c][None], identity_scores[labels == c]]))
    return torch.stack(per_class)


def identity_score(pred_logits: torch.Tensor, pred_masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """M^r * c^r of eq. 9 for identity queries: sigmoid mask times the probability of the query's own class.

    pred_logits (E, K+1), pred_masks (E, h, w), labels (E,) -> (E, h, w).
    """
    class_prob = pred_logits.float().softmax(-1).gather(1, labels[:, None])  # (E, 1)
    return pred_masks.float().sigmoid() * class_prob[:, :, None]


def fused_class_scores(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    automatic_rows: torch.Tensor,
    identity_rows: torch.Tensor,
    identity_labels: torch.Tensor,
) -> torch.Tensor:
    """Eq. 9 on one decoded slice: the class scores of the ``automatic_rows`` queries (round 0,
    without gradient) max-fused with the scores of the identity queries at ``identity_rows`` of
    class ``identity_labels`` (the click centroids).

    pred_logits (Q, K+1), pred_masks (Q, h, w), automatic_rows a (Q,) bool mask or a slice ->
    (K, h, w); a gradient reaches the identity queries wherever one wins its class's score.
    """
    with torch.no_grad():
        automatic = class_score_maps(pred_logits[automatic_rows], pred_masks[automatic_rows])
    identity = identity_score(pred_logits[identity_rows], pred_masks[identity_rows], identity_labels)
    return fuse_identity_scores(automatic, identity, identity_labels)
