"""S2VNet: the meta architecture (training on clips; the building blocks of volume inference).

Design followed: Mask2Former's meta-architecture layout (backbone, pixel decoder, transformer decoder, criterion); written for this project, no code copied.

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

Where the clicks of training go is :mod:`s2vnet.modeling.click_simulation` (the simulated user);
volume inference (automatic sweeps, interactive sessions) lives in :mod:`s2vnet.inference` and uses
:meth:`S2VNet.encode` and :meth:`S2VNet.decode` below. The network builds no inference driver of its
own.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch import nn

from s2vnet.modeling.click_simulation import ClickSimulationSettings, TrainingClickSimulator
from s2vnet.modeling.criterion import CriterionSettings, SetCriterion, SliceTargets, click_point_loss, fused_click_loss
from s2vnet.modeling.interaction import ClickEncoder, InteractionSettings, accumulate_clicks, fused_class_scores
from s2vnet.modeling.matcher import HungarianMatcher
from s2vnet.modeling.pixel_decoder.msdeformattn import build_pixel_decoder
from s2vnet.modeling.postprocess import scores_to_labels, upsample_log_odds
from s2vnet.modeling.propagation import PropagationSettings, RecurrentCentroidAggregator, empty_tracks, training_hand_over
from s2vnet.modeling.structures import CentroidOrigin, SliceFeatures, Tracks
from s2vnet.modeling.transformer_decoder.kmeans_decoder import KMeansTransformerDecoder

logger = logging.getLogger(__name__)


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
        click_simulator: TrainingClickSimulator,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        ignore_label: int,
        propagation: PropagationSettings = PropagationSettings(),
        interaction: InteractionSettings = InteractionSettings(),
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
        self.click_simulator = click_simulator
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility
        self.ignore_label = ignore_label
        self.propagation = propagation
        self.interaction = interaction
        self.click_loss_weight = click_loss_weight
        self.fused_loss_weight = fused_loss_weight
        self.deep_supervision = deep_supervision
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        pixel_decoder = build_pixel_decoder(cfg, backbone_shape)
        mf, s2v = cfg.MODEL.MASK_FORMER, cfg.MODEL.S2VNET
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        decoder = KMeansTransformerDecoder(cfg, in_channels=cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, mask_dim=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM)
        matcher = HungarianMatcher(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.TRAIN_NUM_POINTS)
        criterion = SetCriterion(CriterionSettings.from_config(cfg), matcher)
        click_encoder = ClickEncoder(
            s2v.INTERACTION.IN_FEATURES,
            {name: shape.channels for name, shape in backbone_shape.items()},
            s2v.INTERACTION.HIDDEN_DIM,
            mf.HIDDEN_DIM,
            num_classes=num_classes,
            use_position=s2v.INTERACTION.CLICK_POSITION,
        )
        aggregator = None
        if s2v.AGGREGATION.ENABLED:
            aggregator = RecurrentCentroidAggregator(
                mf.HIDDEN_DIM, s2v.AGGREGATION.NHEADS, s2v.AGGREGATION.DIM_FEEDFORWARD, s2v.AGGREGATION.MEMORY_SLOTS
            )
        return {
            "backbone": backbone,
            "pixel_decoder": pixel_decoder,
            "decoder": decoder,
            "criterion": criterion,
            "click_encoder": click_encoder,
            "aggregator": aggregator,
            "click_simulator": TrainingClickSimulator(ClickSimulationSettings.from_config(cfg), num_classes, cfg.INPUT.IGNORE_LABEL),
            "num_classes": num_classes,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "ignore_label": cfg.INPUT.IGNORE_LABEL,
            "propagation": PropagationSettings.from_config(cfg),
            "interaction": InteractionSettings.from_config(cfg),
            "click_loss_weight": s2v.INTERACTION.CLICK_LOSS_WEIGHT,
            "fused_loss_weight": s2v.INTERACTION.FUSED_LOSS_WEIGHT,
            "deep_supervision": mf.DEEP_SUPERVISION,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def num_learnable_queries(self) -> int:
        return self.decoder.num_queries

    def empty_tracks(self) -> Tracks:
        """No identities: what the first slice of a sweep or clip is decoded with."""
        return empty_tracks(self.decoder.query_feat.weight.shape[1], self.device, self.aggregator)

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

    def encode(self, slices: torch.Tensor) -> SliceFeatures:
        """Backbone + pixel decoder for a batch of slices (N, H, W) uint8."""
        images = self.preprocess(slices)
        backbone_features = self.backbone(images)
        mask_features, multi_scale = self.pixel_decoder.forward_features(backbone_features)
        return SliceFeatures(
            mask_features=mask_features,
            multi_scale_features=multi_scale,
            click_features={name: backbone_features[name] for name in self.click_encoder.in_features},
            input_size=tuple(images.shape[-2:]),
        )

    # ------------------------------------------------------------------ decoder (one slice at a time)
    def decode(self, features: SliceFeatures, tracks: Optional[Tracks] = None, all_layer_masks: Optional[bool] = None) -> Dict[str, object]:
        """Decode slices (B of them) with the learnable queries plus the given identity tracks.

        Returns the decoder's outputs (Mask2Former's dict: ``pred_logits``, ``pred_masks``,
        ``query_embeddings``, ``query_padding_mask``, ``aux_outputs``) and ``track_slot``: track e's
        query row is ``num_learnable_queries + track_slot[e]``.
        """
        batch = len(features)
        extra, padding, slot = (None, None, None)
        if tracks is not None:
            extra, padding, slot = tracks.padded(batch)
        if all_layer_masks is None:
            all_layer_masks = self.training and self.deep_supervision
        outputs = self.decoder(
            features.multi_scale_features,
            features.mask_features,
            extra,
            padding,
            all_layer_masks=all_layer_masks,
            prepared_memory=features.prepared,
        )
        outputs["track_slot"] = slot
        return outputs

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[Dict[str, object]]) -> Dict[str, torch.Tensor]:
        """Training: a list of clips from :class:`ClipDatasetMapper` (``image`` (T, H, W) uint8,
        ``sem_seg`` (T, H, W), ``instances`` one per slice) -> loss dict."""
        if not self.training:
            raise RuntimeError(
                "S2VNet segments whole volumes, slice after slice: in eval mode use "
                "s2vnet.inference.VolumePredictor(model).predict_automatic(volume) or an InteractiveSession"
            )
        images = torch.stack([x["image"] for x in batched_inputs])  # (B, T, H, W)
        labels = torch.stack([x["sem_seg"] for x in batched_inputs]).to(self.device)
        batch, num_slices = images.shape[:2]
        features = self.encode(images.flatten(0, 1))
        slice_index = torch.arange(batch, device=self.device) * num_slices
        targets = [
            [self.slice_targets(batched_inputs[b]["instances"][t], labels[b, t]) for b in range(batch)] for t in range(num_slices)
        ]
        tracks, click_positions = self.click_tracks(features.select(slice_index), labels[:, 0], targets[0])
        losses: Dict[str, torch.Tensor] = {}
        for t in range(num_slices):
            for b, target in enumerate(targets[t]):
                # Identity queries target their class's segment here, or "no object" if it is absent.
                # Tracks.padded() keeps each clip's tracks in order, so this list follows the slots.
                mine = (tracks.batch_index == b).nonzero().flatten().tolist()
                target.extra_segments = torch.tensor(
                    [target.segment_of_class(int(tracks.labels[i])) for i in mine], dtype=torch.int64, device=self.device
                )
            outputs = self.decode(features.select(slice_index + t), tracks)
            slice_losses, matches = self.criterion(outputs, targets[t])
            if t == 0:
                slice_losses.update(self.click_losses(outputs, tracks, click_positions))
            if self.fused_loss_weight > 0:
                slice_losses["loss_fused"] = self.fused_loss_weight * self.fused_loss(outputs, tracks, labels[:, t], features.input_size)
            for name, value in slice_losses.items():
                losses[name] = losses.get(name, 0.0) + value / num_slices
            if t + 1 < num_slices:
                if self.propagation.enabled:
                    segment_labels = [target.labels for target in targets[t]]
                    tracks = training_hand_over(
                        outputs, matches, segment_labels, tracks, self.num_learnable_queries, self.aggregator, self.propagation.detach
                    )
                else:
                    tracks = Tracks.empty(self.decoder.query_feat.weight.shape[1], self.device)
        return losses

    def click_losses(self, outputs, tracks: Tracks, positions: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``loss_click`` (and ``loss_click_<i>`` per auxiliary layer, deep supervision): each
        click centroid's mask must cover its own click, on the clicked slice (:func:`click_point_loss`)."""
        rows = self.num_learnable_queries + outputs["track_slot"]
        layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs["aux_outputs"])]
        return {
            f"loss_click{suffix}": self.click_loss_weight * click_point_loss(layer["pred_masks"], tracks.batch_index, rows, positions)
            for suffix, layer in layers
        }

    def fused_loss(self, outputs, tracks: Tracks, label_slices: torch.Tensor, input_size) -> torch.Tensor:
        """``loss_fused``: :func:`fused_click_loss` for the click-initialised identities on this
        slice (on the clicked slice and, propagated, on the slices after it)."""
        from_clicks = torch.tensor(tracks.from_click(), dtype=torch.bool, device=self.device)
        rows = self.num_learnable_queries + outputs["track_slot"]
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

    # ------------------------------------------------------------------ click-initialised identities (§3.3)
    def click_tracks(self, features: SliceFeatures, label_slices: torch.Tensor, targets: List[SliceTargets]) -> Tuple[Tracks, torch.Tensor]:
        """Click-initialised identities on the first slice of each clip (eqs. 7-8), and the
        position (E, 2), (y, x) in [0, 1] of the input, of each one's latest click.

        The clicks of each round come from the simulated user (:class:`TrainingClickSimulator`);
        each round updates eq. 8's accumulated feature of every (clip, class) it clicks, and the
        next round is clicked against the label map of the identities so far, made as an
        interactive session makes it (:meth:`predict_slice_labels`). The learnable queries still
        learn every segment (non-exclusive matching), so this takes nothing from automatic
        training. The click encoder always runs (on zero clicks when there are none), so every
        parameter gets a gradient in every step.
        """
        # sampled[(b, class)] = eq. 8's O_hat of that identity, with grad through the backbone;
        # where[(b, class)] = the position of its latest click (its centroid's location).
        sampled: Dict[Tuple[int, int], torch.Tensor] = {}
        where: Dict[Tuple[int, int], torch.Tensor] = {}
        present = [[int(c) for c in target.labels.tolist() if c != 0] for target in targets]
        rounds = self.click_simulator.rounds(
            label_slices.cpu().numpy(), present, lambda: self.predict_slice_labels(features, self.tracks_from_sampled(sampled, where))
        )
        for clicks in rounds:
            flat = [(b, click) for b in range(len(clicks)) for click in clicks[b]]
            keys = [(b, click.label) for b, click in flat]
            accumulated = accumulate_clicks(
                self.click_encoder,
                features,
                batch_index=torch.tensor([b for b, _ in flat], device=self.device),
                points=torch.tensor([[c.y, c.x] for _, c in flat], device=self.device),
                keys=keys,
                state=sampled,
                settings=self.interaction,
            )
            sampled.update(accumulated.features)
            where.update(zip(keys, accumulated.positions))
        keys = sorted(where)  # the order of tracks_from_sampled
        positions = torch.stack([where[k] for k in keys]) if keys else torch.zeros(0, 2, device=self.device)
        return self.tracks_from_sampled(sampled, where), positions

    def tracks_from_sampled(self, sampled: Dict[Tuple[int, int], torch.Tensor], where: Dict[Tuple[int, int], torch.Tensor]) -> Tracks:
        """One click identity per (clip, class): eq. 7's centroid of its accumulated feature at its
        latest click, with the learned empty aggregation memory."""
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
            origins=[CentroidOrigin.CLICK] * len(keys),
        )

    @torch.no_grad()
    def predict_slice_labels(self, features: SliceFeatures, tracks: Tracks) -> np.ndarray:
        """Label maps (B, H, W) the simulated user sees, at the input resolution (no grad), made
        as an interactive session makes them: the learnable queries are the automatic pass (round
        0), the click tracks the current round, fused by eq. 9."""
        detached_tracks = Tracks(tracks.queries.detach(), tracks.labels, tracks.batch_index, None, tracks.origins)
        outputs = self.decode(features.detached(), detached_tracks, all_layer_masks=False)
        rows = self.num_learnable_queries + outputs["track_slot"]
        learnable = slice(0, self.num_learnable_queries)
        fused = torch.stack([
            fused_class_scores(
                outputs["pred_logits"][b], outputs["pred_masks"][b], learnable,
                rows[tracks.batch_index == b], tracks.labels[tracks.batch_index == b],
            )
            for b in range(len(features))
        ])
        return scores_to_labels(upsample_log_odds(fused, features.input_size)).cpu().numpy()
