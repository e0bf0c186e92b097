"""S2VNet: the meta architecture (training on clips; the building blocks of volume inference).

A 2D slice segmenter (backbone -> pixel decoder -> k-means transformer decoder) plus:

* slice-to-volume propagation (eqs. 4-6) and recurrent centroid aggregation (eqs. 10-11),
  :mod:`s2vnet.modeling.propagation`;
* click-initialised centroids with adaptive sampling (eqs. 7-8), :mod:`s2vnet.modeling.interaction`.

Training (§3.3, "Unified Segmentation Learning") runs each clip of T ordered slices in order: the
backbone and pixel decoder encode all slices of all clips in one batch, then the decoder runs slice
by slice. On the first slice, each present foreground class starts from simulated clicks with
probability ``CLICK_PROB`` (possibly several rounds, corrected against a no-grad prediction);
otherwise the learnable queries must find it. After each slice, the centroids of foreground
identities are handed to the next slice, and the loss of every slice back-propagates through the
hand-over. One model, one run, learns automatic and interactive segmentation together.

Volume inference (automatic sweeps, interactive sessions) lives in :mod:`s2vnet.inference`; it
uses :meth:`S2VNet.encode` and :meth:`S2VNet.decode` below.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch import nn

from s2vnet.data.clicks import corrective_clicks, initial_clicks, missed_region_clicks
from s2vnet.modeling.criterion import SetCriterion, SliceTargets, click_point_loss, fused_click_loss
from s2vnet.modeling.interaction import ClickEncoder, accumulate_round, fuse_identity_scores, identity_score
from s2vnet.modeling.matcher import HungarianMatcher
from s2vnet.modeling.pixel_decoder.msdeformattn import build_pixel_decoder
from s2vnet.modeling.postprocess import class_score_maps, scores_to_labels, upsample_log_odds
from s2vnet.modeling.propagation import RecurrentCentroidAggregator, Tracks, hand_over
from s2vnet.modeling.transformer_decoder.kmeans_decoder import KMeansTransformerDecoder

logger = logging.getLogger(__name__)

# Track key of a click-initialised identity in training (identities the learnable queries start have None).
CLICK_KEY = "click"


@META_ARCH_REGISTRY.register()
class S2VNet(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        decoder: KMeansTransformerDecoder,
        criterion: SetCriterion,
        click_encoder: ClickEncoder,
        aggregator: Optional[RecurrentCentroidAggregator],
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        ignore_label: int,
        propagation: bool,
        detach_handover: bool,
        handover_threshold: float,
        click_prob: float,
        train_max_rounds: int,
        click_jitter: float,
        missed_click_prob: float,
        adaptive_sampling: bool,
        beta: float,
        max_clicks_per_class: int,
        click_loss_weight: float = 5.0,
        fused_loss_weight: float = 5.0,
        deep_supervision: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.criterion = criterion
        self.click_encoder = click_encoder
        self.aggregator = aggregator
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility
        self.ignore_label = ignore_label
        self.propagation = propagation
        self.detach_handover = detach_handover
        self.handover_threshold = handover_threshold
        self.click_prob = click_prob
        self.train_max_rounds = train_max_rounds
        self.click_jitter = click_jitter
        self.missed_click_prob = missed_click_prob
        self.adaptive_sampling = adaptive_sampling
        self.beta = beta
        self.max_clicks_per_class = max_clicks_per_class
        self.click_loss_weight = click_loss_weight
        self.fused_loss_weight = fused_loss_weight
        self.deep_supervision = deep_supervision
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self._rng: Optional[np.random.Generator] = None

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        pixel_decoder = build_pixel_decoder(cfg, backbone_shape)
        mf, s2v = cfg.MODEL.MASK_FORMER, cfg.MODEL.S2VNET
        decoder = KMeansTransformerDecoder(cfg, in_channels=cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, mask_dim=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM)
        weight_dict = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        criterion = SetCriterion(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            num_learnable_queries=mf.NUM_OBJECT_QUERIES,
            matcher=HungarianMatcher(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.TRAIN_NUM_POINTS),
            weight_dict=weight_dict,
            no_object_weight=mf.NO_OBJECT_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
            exclusive_identities=s2v.PROPAGATION.EXCLUSIVE_MATCHING,
        )
        click_encoder = ClickEncoder(
            s2v.INTERACTION.IN_FEATURES,
            {name: shape.channels for name, shape in backbone_shape.items()},
            s2v.INTERACTION.HIDDEN_DIM,
            mf.HIDDEN_DIM,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            use_position=s2v.INTERACTION.CLICK_POSITION,
        )
        aggregator = None
        if s2v.AGGREGATION.ENABLED:
            aggregator = RecurrentCentroidAggregator(
                mf.HIDDEN_DIM, s2v.AGGREGATION.NHEADS, s2v.AGGREGATION.DIM_FEEDFORWARD, s2v.AGGREGATION.MEMORY_SLOTS
            )
        model_kwargs = {
            "backbone": backbone,
            "pixel_decoder": pixel_decoder,
            "decoder": decoder,
            "criterion": criterion,
            "click_encoder": click_encoder,
            "aggregator": aggregator,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "ignore_label": cfg.INPUT.IGNORE_LABEL,
            "propagation": s2v.PROPAGATION.ENABLED,
            "detach_handover": s2v.PROPAGATION.DETACH,
            "handover_threshold": s2v.PROPAGATION.SCORE_THRESHOLD,
            "click_prob": s2v.INTERACTION.CLICK_PROB,
            "train_max_rounds": s2v.INTERACTION.TRAIN_MAX_ROUNDS,
            "click_jitter": s2v.INTERACTION.CLICK_JITTER,
            "missed_click_prob": s2v.INTERACTION.TRAIN_MISSED_CLICK_PROB,
            "adaptive_sampling": s2v.INTERACTION.ADAPTIVE_SAMPLING,
            "beta": s2v.INTERACTION.BETA,
            "max_clicks_per_class": s2v.INTERACTION.MAX_CLICKS_PER_CLASS,
            "click_loss_weight": s2v.INTERACTION.CLICK_LOSS_WEIGHT,
            "fused_loss_weight": s2v.INTERACTION.FUSED_LOSS_WEIGHT,
            "deep_supervision": mf.DEEP_SUPERVISION,
        }
        return model_kwargs

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def rng(self) -> np.random.Generator:
        # Seeded from torch's seed, which Detectron2 sets per rank (SEED + rank), so runs repeat.
        if self._rng is None:
            self._rng = np.random.default_rng(torch.initial_seed())
        return self._rng

    # ------------------------------------------------------------------ encoder (batched over slices)
    def preprocess(self, slices: torch.Tensor) -> torch.Tensor:
        """uint8 slices (N, H, W) -> normalised 3-channel images (N, 3, H', W') padded to SIZE_DIVISIBILITY.

        Grayscale is replicated into the 3 channels ImageNet stems expect. Padding uses raw intensity
        0 (air in the CT window), applied before normalisation.
        """
        images = slices.to(self.device, non_blocking=True).float()
        height, width = images.shape[-2:]
        pad_h = (-height) % self.size_divisibility
        pad_w = (-width) % self.size_divisibility
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), value=0.0)
        images = images[:, None].expand(-1, 3, -1, -1)
        return (images - self.pixel_mean) / self.pixel_std

    def encode(self, slices: torch.Tensor) -> Dict[str, object]:
        """Backbone + pixel decoder for a batch of slices (N, H, W) uint8.

        Returns ``mask_features`` (N, C, H'/4, W'/4), ``multi_scale_features`` (list of 3 levels),
        ``click_features`` (the backbone maps eq. 7 samples from) and ``input_size`` (H', W').
        """
        images = self.preprocess(slices)
        backbone_features = self.backbone(images)
        mask_features, multi_scale = self.pixel_decoder.forward_features(backbone_features)
        return {
            "mask_features": mask_features,
            "multi_scale_features": multi_scale,
            "click_features": {name: backbone_features[name] for name in self.click_encoder.in_features},
            "input_size": tuple(images.shape[-2:]),
        }

    @staticmethod
    def select_features(features: Dict[str, object], index, with_click_features: bool = True) -> Dict[str, object]:
        """The features of a subset of the encoded slices (an index tensor or a slice).

        A tensor index gathers (copies), and an interactive round gathers a pair of slices at
        every step: callers that only decode leave out the click features
        (``with_click_features=False``), and mask features shared with a prepared memory are
        gathered once.
        """
        selected = {
            "multi_scale_features": [level[index] for level in features["multi_scale_features"]],
            "input_size": features["input_size"],
        }
        prepared = features.get("prepared_memory")
        if prepared is not None:  # cached by an interactive session (see KMeansMask2FormerDecoder.prepare_memory)
            selected["prepared_memory"] = {k: [level[index] for level in v] if isinstance(v, list) else v[index] for k, v in prepared.items()}
        if prepared is not None and prepared.get("mask_features") is features["mask_features"]:
            selected["mask_features"] = selected["prepared_memory"]["mask_features"]
        else:
            selected["mask_features"] = features["mask_features"][index]
        if with_click_features:
            selected["click_features"] = {k: v[index] for k, v in features["click_features"].items()}
        return selected

    # ------------------------------------------------------------------ decoder (one slice at a time)
    def decode(self, features: Dict[str, object], tracks: Optional[Tracks] = None, all_layer_masks: Optional[bool] = None, prepared_memory=None):
        """Decode slices (B of them) with the learnable queries plus the given identity tracks.

        ``prepared_memory`` (or ``features["prepared_memory"]``) is the decoder's query-independent
        per-slice work, for callers that decode the same slices again and again (interactive rounds).
        """
        batch = features["mask_features"].shape[0]
        if prepared_memory is None:
            prepared_memory = features.get("prepared_memory")
        extra, padding, slot = (None, None, None)
        if tracks is not None:
            extra, padding, slot = tracks.padded(batch)
        if all_layer_masks is None:
            all_layer_masks = self.training and self.deep_supervision
        outputs = self.decoder(
            features["multi_scale_features"],
            features["mask_features"],
            extra,
            padding,
            all_layer_masks=all_layer_masks,
            prepared_memory=prepared_memory,
        )
        outputs["track_slot"] = slot
        return outputs

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[Dict[str, object]]):
        """Training: a list of clips from :class:`ClipDatasetMapper` (``image`` (T, H, W) uint8,
        ``sem_seg`` (T, H, W), ``instances`` one per slice) -> loss dict.

        In eval mode, a list of volumes (``image`` (Z, H, W) uint8) -> ``[{"sem_seg": labels}]``
        through automatic volume inference.
        """
        if not self.training:
            from s2vnet.inference.volume_predictor import VolumePredictor  # inference builds on the model

            predictor = VolumePredictor(self)
            return [{"sem_seg": torch.from_numpy(predictor.predict_automatic(x["image"]).labels)} for x in batched_inputs]
        return self.training_losses(batched_inputs)

    def training_losses(self, batched_inputs: List[Dict[str, object]]) -> Dict[str, torch.Tensor]:
        images = torch.stack([x["image"] for x in batched_inputs])  # (B, T, H, W)
        labels = torch.stack([x["sem_seg"] for x in batched_inputs]).to(self.device)
        batch, num_slices = images.shape[:2]
        features = self.encode(images.flatten(0, 1))
        slice_index = torch.arange(batch, device=self.device) * num_slices

        def features_of(t):
            return self.select_features(features, slice_index + t)

        targets = [
            [self.slice_targets(batched_inputs[b]["instances"][t], labels[b, t]) for b in range(batch)] for t in range(num_slices)
        ]
        tracks, click_positions = self.click_tracks(features_of(0), labels[:, 0], targets[0])
        losses: Dict[str, torch.Tensor] = {}
        for t in range(num_slices):
            for b, target in enumerate(targets[t]):
                # Identity queries target their class's segment here, or "no object" if it is absent.
                # Tracks.padded() keeps each clip's tracks in order, so this list follows the slots.
                mine = (tracks.batch_index == b).nonzero().flatten().tolist()
                target.extra_segments = torch.tensor(
                    [target.segment_of_class(int(tracks.labels[i])) for i in mine], dtype=torch.int64, device=self.device
                )
            outputs = self.decode(features_of(t), tracks)
            slice_losses, matches = self.criterion(outputs, targets[t])
            if t == 0:
                slice_losses.update(self.click_losses(outputs, tracks, click_positions))
            if self.fused_loss_weight > 0:
                slice_losses["loss_fused"] = self.fused_loss_weight * self.fused_loss(outputs, tracks, labels[:, t], features["input_size"])
            for name, value in slice_losses.items():
                losses[name] = losses.get(name, 0.0) + value / num_slices
            if t + 1 < num_slices:
                tracks = self.training_hand_over(outputs, matches, targets[t], tracks) if self.propagation else Tracks.empty(
                    self.decoder.query_feat.weight.shape[1], self.device
                )
        return losses

    def click_losses(self, outputs, tracks: Tracks, positions: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``loss_click`` (and ``loss_click_<i>`` per auxiliary layer, deep supervision): each
        click centroid's mask must cover its own click, on the clicked slice (:func:`click_point_loss`)."""
        rows = self.decoder.num_queries + outputs["track_slot"]
        layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs["aux_outputs"])]
        return {
            f"loss_click{suffix}": self.click_loss_weight * click_point_loss(layer["pred_masks"], tracks.batch_index, rows, positions)
            for suffix, layer in layers
        }

    def fused_loss(self, outputs, tracks: Tracks, label_slices: torch.Tensor, input_size) -> torch.Tensor:
        """``loss_fused``: :func:`fused_click_loss` for the click-initialised identities on this
        slice (on the clicked slice and, propagated, on the slices after it)."""
        from_clicks = torch.tensor([key == CLICK_KEY for key in tracks.keys], dtype=torch.bool, device=self.device)
        rows = self.decoder.num_queries + outputs["track_slot"]
        return fused_click_loss(
            outputs["pred_logits"], outputs["pred_masks"], outputs["query_padding_mask"], rows[from_clicks],
            tracks.batch_index[from_clicks], tracks.labels[from_clicks], label_slices, input_size, self.ignore_label,
        )

    def slice_targets(self, instances, label_slice: torch.Tensor) -> SliceTargets:
        """Segments of one slice from the mapper's per-class masks (background included); pixels
        with the ignore label are invalid for every loss."""
        return SliceTargets(
            labels=instances.gt_classes.to(self.device),
            masks=instances.gt_masks.tensor.to(self.device).float(),
            valid=(label_slice != self.ignore_label).float(),
            extra_segments=torch.zeros(0, dtype=torch.int64, device=self.device),
        )

    def training_hand_over(self, outputs, matches, targets: List[SliceTargets], tracks: Tracks) -> Tracks:
        """Eqs. 5-6 in training: identity queries whose class is present continue; learnable queries
        matched to a foreground class nobody carries yet start new identities; all of them pass
        through the aggregator."""
        num_learnable = self.decoder.num_queries
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
                label = int(targets[b].labels[s])
                # Background is never handed over by the learnable queries; a class already carried
                # by a continuing identity keeps that one (and its memory).
                if q < num_learnable and label != 0 and label not in tracked:
                    new_rows.append((b, q))
                    new_labels.append(label)
        embeddings = outputs["query_embeddings"]
        index_b = [b for b, _, _ in continuing_rows] + [b for b, _ in new_rows]
        index_q = [q for _, q, _ in continuing_rows] + [q for _, q in new_rows]
        centroids = embeddings[torch.tensor(index_b, dtype=torch.long), torch.tensor(index_q, dtype=torch.long)]
        labels = torch.tensor(
            [int(tracks.labels[t]) for _, _, t in continuing_rows] + new_labels, dtype=torch.int64, device=self.device
        )
        batch_index = torch.tensor(index_b, dtype=torch.int64, device=self.device)
        memory = None
        if self.aggregator is not None:
            # H^{t-1}: the carried memory of continuing identities, the learned empty history of new ones.
            carried = tracks.memory[torch.tensor([t for _, _, t in continuing_rows], dtype=torch.long)]
            memory = torch.cat([carried, self.aggregator.initial(len(new_rows)).to(carried.dtype)])
        keys = [tracks.keys[t] for _, _, t in continuing_rows] + [None] * len(new_rows)
        return hand_over(centroids, labels, batch_index, memory, self.aggregator, self.detach_handover, keys)

    # ------------------------------------------------------------------ simulated clicks (§3.3)
    def click_tracks(self, features, label_slices: torch.Tensor, targets: List[SliceTargets]) -> Tuple[Tracks, torch.Tensor]:
        """Click-initialised identities on the first slice of each clip (eqs. 7-8), and the
        position (E, 2), (y, x) in [0, 1] of the input, of each one's latest click.

        Each foreground class present on the slice is clicked with probability ``CLICK_PROB``.
        The first click sits deep inside the class's largest region (jittered), or in the largest
        region the automatic prediction misses (:meth:`first_clicks`); up to
        ``TRAIN_MAX_ROUNDS - 1`` corrective rounds follow, each against a no-grad prediction of the
        current state, with eq. 8's accumulation per class. As in evaluation, a corrective round
        clicks the largest error of *every* class on the slice, so the model also learns negative
        clicks on false positives of organs absent from the slice; the learnable queries still
        learn every segment (non-exclusive matching), so this takes nothing from automatic
        training. The click encoder always runs (on zero clicks when there are none), so every
        parameter gets a gradient in every step.
        """
        batch = label_slices.shape[0]
        labels_np = label_slices.cpu().numpy()
        chosen = []
        for b in range(batch):
            present = [int(c) for c in targets[b].labels.tolist() if c != 0]
            chosen.append([c for c in present if self.rng.random() < self.click_prob])
        # sampled[(b, class)] = eq. 8's O_hat of that identity, with grad through the backbone;
        # where[(b, class)] = the position of its latest click (its centroid's location).
        sampled: Dict[Tuple[int, int], torch.Tensor] = {}
        where: Dict[Tuple[int, int], torch.Tensor] = {}
        foreground = list(range(1, self.num_classes))
        num_rounds = int(self.rng.integers(1, self.train_max_rounds + 1)) if any(chosen) else 0
        for round_index in range(num_rounds):
            if round_index == 0:
                clicks = self.first_clicks(features, labels_np, chosen)
            else:
                predicted = self.predict_slice_labels(features, self.tracks_from_sampled(sampled, where))
                clicks = [
                    corrective_clicks(labels_np[b], predicted[b], foreground, rng=self.rng, jitter_fraction=self.click_jitter, ignore_label=self.ignore_label)
                    if chosen[b] else []
                    for b in range(batch)
                ]
            flat = [(b, click) for b in range(batch) for click in clicks[b]]
            if not flat:
                break
            batch_index = torch.tensor([b for b, _ in flat], device=self.device)
            points = torch.tensor([[c.y, c.x] for _, c in flat], device=self.device)
            new_features = self.click_encoder.sample(features["click_features"], batch_index, points, features["input_size"])
            keys = [(b, click.label) for b, click in flat]
            sampled.update(accumulate_round(sampled, keys, new_features, self.beta, self.adaptive_sampling))
            positions = self.click_encoder.normalized_positions(points, features["input_size"])
            where.update(zip(keys, positions))
        keys = sorted(where)  # the order of tracks_from_sampled
        positions = torch.stack([where[k] for k in keys]) if keys else torch.zeros(0, 2, device=self.device)
        return self.tracks_from_sampled(sampled, where), positions

    def first_clicks(self, features, labels_np: np.ndarray, chosen: List[List[int]]) -> List[list]:
        """Round 0 of :meth:`click_tracks`: per clip, the first click of each chosen class.

        With probability ``TRAIN_MISSED_CLICK_PROB`` a clip's first clicks go where the automatic
        prediction (the learnable queries alone) misses each class (:func:`missed_region_clicks`),
        otherwise deep inside the class (:func:`initial_clicks`). Evaluation's corrective clicks land
        in such missed regions, which look unlike an organ's interior to the model; a click there
        has to claim the region from the class the automatic pass gave it.
        """
        batch = len(chosen)
        # No draw at probability 0, so that runs without the option keep their random stream.
        at_misses = [self.missed_click_prob > 0 and bool(chosen[b]) and self.rng.random() < self.missed_click_prob for b in range(batch)]
        automatic = self.predict_slice_labels(features, Tracks.empty(self.decoder.query_feat.weight.shape[1], self.device)) if any(at_misses) else None
        options = dict(rng=self.rng, jitter_fraction=self.click_jitter, ignore_label=self.ignore_label)
        return [
            missed_region_clicks(labels_np[b], automatic[b], chosen[b], **options) if at_misses[b] else initial_clicks(labels_np[b], chosen[b], **options)
            for b in range(batch)
        ]

    def tracks_from_sampled(self, sampled: Dict[Tuple[int, int], torch.Tensor], where: Dict[Tuple[int, int], torch.Tensor]) -> Tracks:
        keys = sorted(sampled)
        if keys:
            stacked = torch.stack([sampled[k] for k in keys])
            positions = torch.stack([where[k] for k in keys])
        else:
            stacked = torch.zeros(0, self.click_encoder.feature_dim, device=self.device)
            positions = torch.zeros(0, 2, device=self.device)
        memory = None if self.aggregator is None else self.aggregator.initial(len(keys))
        labels = torch.tensor([c for _, c in keys], dtype=torch.int64, device=self.device)
        return Tracks(
            queries=self.click_encoder(stacked, labels, positions),
            labels=labels,
            batch_index=torch.tensor([b for b, _ in keys], dtype=torch.int64, device=self.device),
            memory=memory,
            keys=[CLICK_KEY] * len(keys),
        )

    @torch.no_grad()
    def predict_slice_labels(self, features, tracks: Tracks) -> np.ndarray:
        """Label maps (B, H, W) the simulated user sees, at the input resolution (no grad), made
        as an interactive session makes them: the learnable queries are the automatic pass (round
        0), the click tracks the current round, fused by eq. 9."""
        detached = {
            "mask_features": features["mask_features"].detach(),
            "multi_scale_features": [f.detach() for f in features["multi_scale_features"]],
            "click_features": features["click_features"],
            "input_size": features["input_size"],
        }
        detached_tracks = Tracks(tracks.queries.detach(), tracks.labels, tracks.batch_index, None)
        outputs = self.decode(detached, detached_tracks, all_layer_masks=False)
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        num_learnable = self.decoder.num_queries
        rows = num_learnable + outputs["track_slot"]
        track_scores = identity_score(logits[tracks.batch_index, rows], masks[tracks.batch_index, rows], tracks.labels)
        fused = torch.stack([
            fuse_identity_scores(
                class_score_maps(logits[b, :num_learnable], masks[b, :num_learnable]),
                track_scores[tracks.batch_index == b], tracks.labels[tracks.batch_index == b],
            )
            for b in range(logits.shape[0])
        ])
        return scores_to_labels(upsample_log_odds(fused, features["input_size"])).cpu().numpy()
