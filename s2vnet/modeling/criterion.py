"""Losses of one decoded slice: class cross-entropy + mask BCE + dice, on every decoder layer.

Design followed: Mask2Former's set criterion (Cheng et al. 2022); written for this project, no code copied.

Targets are the slice's segments, one per class present (background, label 0, is a real class
with its own segment; "no object" is the extra class K). Two kinds of queries get targets:

* the N learnable queries are matched by the Hungarian matcher (eq. 5) to the slice's segments;
  unmatched learnable queries learn "no object". By default they are matched to every segment,
  so that the learnable queries keep finding every organ and a handed-over centroid adds a second,
  context-informed prediction of its class. With ``exclusive_identities`` they are matched only to
  the segments no identity query covers (tracker style: a tracked organ is the track's alone);

* an identity-carrying (extra) query, a handed-over or click centroid of class c, has a fixed
  target: the segment of class c on this slice, or "no object" if c is absent here (which is
  what teaches a propagated centroid to let go when its organ ends).

Losses follow Mask2Former: cross-entropy with the "no object" class down-weighted, and mask BCE
and dice on importance-sampled points, normalised by the number of target masks in the batch.
Pixels without ground truth (crop padding, ``INPUT.IGNORE_LABEL``) are left out of the mask losses
and of the matching costs.
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils.comm import get_world_size
from torch import nn

from s2vnet.modeling.interaction import fused_class_scores
from s2vnet.modeling.matcher import HungarianMatcher
from s2vnet.modeling.point_sampling import point_sample, uncertain_point_coords
from s2vnet.modeling.postprocess import upsample_log_odds


@dataclass
class SliceTargets:
    """Ground truth of one slice, and the fixed targets of its extra queries."""

    labels: torch.Tensor  # (S,) int64 class of each segment
    masks: torch.Tensor  # (S, H, W) float in {0, 1}
    valid: torch.Tensor  # (H, W) float in {0, 1}; 0 where the label is the ignore value
    extra_segments: torch.Tensor  # (E,) int64: segment index of each extra query, -1 = class absent

    def segment_of_class(self, class_id: int) -> int:
        hits = (self.labels == class_id).nonzero()
        return int(hits[0, 0]) if hits.numel() else -1


@dataclass(frozen=True)
class CriterionSettings:
    """What :class:`SetCriterion` matches and how it weighs the losses (``MODEL.MASK_FORMER`` keys,
    and ``MODEL.S2VNET.PROPAGATION.EXCLUSIVE_MATCHING``)."""

    num_classes: int  # background included; the classifier's extra output, K, is "no object"
    num_learnable_queries: int
    class_weight: float = 2.0  # cross-entropy
    mask_weight: float = 5.0  # mask binary cross-entropy
    dice_weight: float = 5.0  # mask dice
    no_object_weight: float = 0.1  # cross-entropy weight of the "no object" class
    # Point sampling of the mask losses (:func:`uncertain_point_coords`): points per mask, candidates
    # per point, share of points taken where the prediction is uncertain.
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    exclusive_identities: bool = False  # learnable queries are matched only to segments no identity query covers

    @classmethod
    def from_config(cls, cfg) -> "CriterionSettings":
        mf = cfg.MODEL.MASK_FORMER
        return cls(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            num_learnable_queries=mf.NUM_OBJECT_QUERIES,
            class_weight=mf.CLASS_WEIGHT,
            mask_weight=mf.MASK_WEIGHT,
            dice_weight=mf.DICE_WEIGHT,
            no_object_weight=mf.NO_OBJECT_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
            exclusive_identities=cfg.MODEL.S2VNET.PROPAGATION.EXCLUSIVE_MATCHING,
        )

    @property
    def weight_dict(self) -> Dict[str, float]:
        """The weight of each loss of a layer, by its name in the loss dict."""
        return {"loss_ce": self.class_weight, "loss_mask": self.mask_weight, "loss_dice": self.dice_weight}


class SetCriterion(nn.Module):
    def __init__(self, settings: CriterionSettings, matcher: HungarianMatcher):
        super().__init__()
        self.settings = settings
        self.matcher = matcher
        class_weights = torch.ones(settings.num_classes + 1)
        class_weights[-1] = settings.no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    # ------------------------------------------------------------------ matching
    def match(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, targets: List[SliceTargets]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(query indices, segment indices) per batch element: Hungarian for the learnable queries,
        plus the fixed pairs of extra queries whose class is present."""
        matches = []
        n = self.settings.num_learnable_queries
        for b, target in enumerate(targets):
            free = torch.ones(len(target.labels), dtype=torch.bool, device=target.labels.device)
            if self.settings.exclusive_identities:
                free[target.extra_segments[target.extra_segments >= 0]] = False
            free_index = free.nonzero().flatten()
            rows, cols = self.matcher(
                pred_logits[b, :n], pred_masks[b, :n], target.labels[free_index], target.masks[free_index], target.valid
            )
            extra_queries = torch.arange(len(target.extra_segments), device=rows.device) + n
            has_target = target.extra_segments >= 0
            matches.append(
                (
                    torch.cat([rows, extra_queries[has_target]]),
                    torch.cat([free_index[cols], target.extra_segments[has_target]]),
                )
            )
        return matches

    # ------------------------------------------------------------------ losses
    def loss_labels(self, pred_logits, targets, matches, query_padding_mask) -> torch.Tensor:
        target_classes = torch.full(pred_logits.shape[:2], self.settings.num_classes, dtype=torch.int64, device=pred_logits.device)
        for b, (queries, segments) in enumerate(matches):
            target_classes[b, queries] = targets[b].labels[segments]
        # Padding queries (batches with unequal numbers of extra queries) carry no loss.
        target_classes[query_padding_mask] = -100
        return F.cross_entropy(pred_logits.float().transpose(1, 2), target_classes, self.class_weights, ignore_index=-100)

    def loss_masks(self, pred_masks, targets, matches, num_masks: float) -> Dict[str, torch.Tensor]:
        predicted = torch.cat([pred_masks[b, queries] for b, (queries, _) in enumerate(matches)])
        if predicted.shape[0] == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph (and DDP) intact
            return {"loss_mask": zero, "loss_dice": zero}
        target = torch.cat([targets[b].masks[segments] for b, (_, segments) in enumerate(matches)])
        valid = torch.cat([targets[b].valid[None].expand(len(segments), -1, -1) for b, (_, segments) in enumerate(matches)])
        predicted = predicted[:, None].float()
        settings = self.settings
        coords = uncertain_point_coords(predicted, settings.num_points, settings.oversample_ratio, settings.importance_sample_ratio)
        logits = point_sample(predicted, coords).squeeze(1)  # (M, P)
        with torch.no_grad():
            labels = point_sample(target[:, None].float(), coords).squeeze(1)
            weights = (point_sample(valid[:, None].float(), coords).squeeze(1) > 0.5).float()
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        bce = (bce * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        probs = logits.sigmoid() * weights
        dice = 1.0 - (2.0 * (probs * labels).sum(1) + 1.0) / (probs.sum(1) + (labels * weights).sum(1) + 1.0)
        return {"loss_mask": bce.sum() / num_masks, "loss_dice": dice.sum() / num_masks}

    def forward(self, outputs: Dict[str, object], targets: List[SliceTargets]) -> Tuple[Dict[str, torch.Tensor], List]:
        """Weighted losses of the final and every auxiliary prediction, and the final matches.

        Loss keys are ``loss_ce``, ``loss_mask``, ``loss_dice`` for the final layer and the same with
        suffix ``_<i>`` for auxiliary prediction i. The final-layer matches drive the hand-over.
        """
        num_masks = 0
        for t in targets:
            identities = int((t.extra_segments >= 0).sum())
            matchable = len(t.labels) - identities if self.settings.exclusive_identities else len(t.labels)
            num_masks += identities + min(self.settings.num_learnable_queries, matchable)
        num_masks = torch.as_tensor(float(num_masks), device=outputs["pred_logits"].device)
        if get_world_size() > 1:
            torch.distributed.all_reduce(num_masks)
        num_masks = (num_masks / get_world_size()).clamp(min=1.0).item()

        losses, final_matches = {}, None
        weights = self.settings.weight_dict
        padding = outputs["query_padding_mask"]
        layer_outputs = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs["aux_outputs"])]
        for suffix, layer in layer_outputs:
            matches = self.match(layer["pred_logits"], layer["pred_masks"], targets)
            if final_matches is None:
                final_matches = matches
            layer_losses = {"loss_ce": self.loss_labels(layer["pred_logits"], targets, matches, padding)}
            layer_losses.update(self.loss_masks(layer["pred_masks"], targets, matches, num_masks))
            for name, value in layer_losses.items():
                losses[name + suffix] = value * weights[name]
        return losses, final_matches


def click_point_loss(pred_masks: torch.Tensor, batch_index: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean BCE of each click centroid's mask logit at its own click, against 1.

    A click is a ground-truth label of one pixel: the user says "this is class c", and clicks
    where the prediction is wrong. The mask losses sample a few thousand points of the whole
    slice, among which the pixels of a corrective click's error weigh almost nothing, so without
    this term a click centroid learns to reproduce its organ's usual mask, mistakes included, and
    eq. 9's max fusion then leaves a confident automatic mistake in place however often the user
    clicks on it. (The paper is silent on this; it names CE and Dice losses.)

    Args:
        pred_masks: (B, Q, h, w) mask logits of one slice.
        batch_index, rows: (E,) the batch element and query row of each click centroid.
        positions: (E, 2) its click, (y, x) in [0, 1] of the input.
    Returns:
        A scalar; 0 (still in the graph, for DDP) when there are no clicks.
    """
    if rows.numel() == 0:
        return pred_masks.sum() * 0.0
    masks = pred_masks[batch_index, rows][:, None].float()  # (E, 1, h, w)
    logits = point_sample(masks, positions.flip(-1)[:, None, :].float())[:, 0, 0]  # (E,); point_sample wants (x, y)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def fused_click_loss(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    query_padding_mask: torch.Tensor,
    click_rows: torch.Tensor,
    click_batch_index: torch.Tensor,
    click_labels: torch.Tensor,
    label_slices: torch.Tensor,
    input_size: Tuple[int, int],
    ignore_label: int,
) -> torch.Tensor:
    """Cross-entropy of the label map an interactive session shows, fused by eq. 9.

    At inference a click centroid of class c changes the result only through eq. 9: class c's
    score becomes max(automatic score, click centroid's score), and the label is the class with the
    highest fused score. The mask losses train a click centroid on its class's mask by itself, so
    wherever its mask is a little larger than the automatic one (at every boundary of c, on every
    slice its track reaches) the max turns correct voxels into c: a round breaks voxels far from
    its click while it fixes the clicked error. This term scores the fused labels themselves: the
    automatic scores (the other queries of the same decode, detached) max-fused with the click
    centroids' scores (eq. 9, per class), resized to the input in log-odds as inference does, and a
    softmax cross-entropy over classes against the ground truth. The max passes a gradient only
    where a click centroid decides its class's fused score, so it teaches exactly what the max
    fusion needs: claim the voxels the automatic pass got wrong, leave the ones it got right.

    The mean is over the pixels where a clicked class is true or predicted (its region of
    influence), not over the whole slice, so that a click's few broken voxels are not diluted by
    the empty rest of the image.

    Args:
        pred_logits: (B, Q, K+1) and pred_masks (B, Q, h, w) of one decoded slice (all queries).
        query_padding_mask: (B, Q), True for padding queries.
        click_rows, click_batch_index, click_labels: (E,) query row, batch element and class of
            every click-initialised centroid on this slice.
        label_slices: (B, H, W) ground-truth labels of the slices, ``ignore_label`` where unknown.
        input_size: (H', W') of the padded network input the mask grid covers.
    Returns:
        A scalar; 0 (still in the graph, for DDP) when there are no click centroids.
    """
    losses = []
    for b in click_batch_index.unique().tolist():
        mine = click_batch_index == b
        rows, labels = click_rows[mine], click_labels[mine]
        automatic = ~query_padding_mask[b]
        automatic[rows] = False
        fused = fused_class_scores(pred_logits[b], pred_masks[b], automatic, rows, labels)  # eq. 9
        height, width = label_slices.shape[-2:]
        log_odds = upsample_log_odds(fused, input_size)[:, :height, :width]  # (K, H, W)
        target = label_slices[b].long()
        with torch.no_grad():
            predicted = log_odds.argmax(0)
            region = torch.zeros_like(target, dtype=torch.bool)
            for c in labels.unique().tolist():
                region |= (target == c) | (predicted == c)
            region &= target != ignore_label
        if region.any():
            ce = F.cross_entropy(log_odds[None], torch.where(region, target, 0)[None], reduction="none")[0]
            losses.append(ce[region].mean())
    if not losses:
        return pred_masks.sum() * 0.0
    return torch.stack(losses).mean()
