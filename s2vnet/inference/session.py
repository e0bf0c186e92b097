"""Interactive segmentation sessions (§3.2 "Interaction-Aware Cluster Center Initialization",
"Adaptive Pixel Feature Sampling"; §4.1 "Testing: Interactive").

::

    session = InteractiveSession(model, volume)         # encodes the volume once, runs the automatic pass
    session.click(slice=40, y=120, x=88, label=6)      # a positive click for class 6
    session.click(40, 30, 30, 0)                       # label 0 = background = a negative click
    result = session.run()                             # one refinement round with all pending clicks
    result.labels                                      # (Z, Y, X) uint8
    session.undo(); session.reset(6)

Design:

* The backbone and pixel-decoder features of every slice are computed once, when the session
  opens, and reused by every round; a round only re-runs the transformer decoder (the paper's
  point that refinement needs no new network pass).
* Each round adds one cluster centre per class clicked in it (eq. 7): the mean feature sampled at
  the class's clicks of the round, accumulated over its earlier rounds (eq. 8, ``BETA``), so that
  ``MAX_CLICKS_PER_CLASS`` (the paper's 20 centres per class) bounds the rounds per class. From
  every click it starts on the click's slice (with the click's position code, see
  :class:`ClickEncoder`) and is propagated both ways through the volume (with aggregation, eqs.
  10-11) until its class is no longer predicted; all clicks of a round, of any classes and on any
  slices, go through in one sweep.
* Class scores are fused over rounds by the maximum of mask score x class score (eq. 9), with the
  automatic prediction as round 0. A click of class c therefore only raises class c's scores: the
  other classes lose at most the voxels class c takes.

Coordinates are indices into the session's (Z, Y, X) volume: the canonical array of a
:class:`~s2vnet.data.volume_io.Volume` (see :meth:`InteractiveSession.click_voxel` for
coordinates in the original file's voxel grid).
"""
import logging
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch

from s2vnet.data.clicks import Click
from s2vnet.data.intensity import normalize_intensity
from s2vnet.data.volume_io import Volume, VolumeGeometry, original_to_canonical_index, warn_if_not_hounsfield
from s2vnet.inference.volume_predictor import VolumePredictor, check_normalized_volume
from s2vnet.modeling.interaction import accumulate_clicks, fuse_identity_scores, fuse_rounds, identity_score
from s2vnet.modeling.postprocess import scores_to_labels
from s2vnet.modeling.propagation import add_click_tracks
from s2vnet.modeling.structures import CentroidOrigin, PreparedMemory, SliceFeatures, Tracks
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class Round:
    """One refinement round: its clicks, the per-class scores its centroids produced (eq. 9's
    M^r x c^r, maximum over the round's centroids of a class), and eq. 8's state before it."""

    clicks: List[Click]
    scores: Dict[int, torch.Tensor]  # class -> (Z, h, w) float16 on the mask grid
    previous_features: Dict[int, Optional[torch.Tensor]] = field(default_factory=dict)
    slices: Set[int] = field(default_factory=set)  # the slices its centroids reached (where it can change labels)


@dataclass
class _Sweep:
    """One direction of a round's propagation: from its first click slice to the end of the
    volume, or until its click centroids have died out after its last click slice."""

    direction: int  # +1 (towards the last slice) or -1
    z: int  # the slice it decodes next
    last_start: int  # its last click slice
    tracks: Tracks  # the identities it carries into slice z
    finished: bool = False

    @staticmethod
    def starting(starts: Dict[int, list], direction: int, tracks: Tracks) -> "_Sweep":
        ordered = sorted(starts, reverse=direction < 0)
        return _Sweep(direction, ordered[0], ordered[-1], tracks)


@dataclass
class SessionResult:
    labels: np.ndarray  # (Z, Y, X) uint8
    masks: Dict[int, np.ndarray]  # class id -> (Z, Y, X) bool, for every foreground class


class InteractiveSession:
    def __init__(
        self,
        model_or_predictor,
        volume: Union[Volume, np.ndarray],
        modality: Optional[str] = None,
        class_names: Optional[Sequence[str]] = None,
    ):
        """Open a session on ``volume``: a :class:`Volume` (raw intensities, normalised here with
        ``modality``) or a uint8 (Z, Y, X) array already normalised. Modality and class names
        default to those the checkpoint describes (``predictor.description``), else CT and the
        class ids."""
        self.predictor = model_or_predictor if isinstance(model_or_predictor, VolumePredictor) else VolumePredictor(model_or_predictor)
        self.model = self.predictor.model
        self.geometry: Optional[VolumeGeometry] = None
        description = self.predictor.description
        if isinstance(volume, Volume):
            self.geometry = volume.geometry
            if modality is None:
                modality = description.modality if description is not None else "CT"
                if modality not in ("CT", "MR"):
                    raise InputError(f"the model was trained on {modality} data: say which modality {volume.path} is (modality='CT' or 'MR')")
            if modality == "CT":
                warn_if_not_hounsfield(volume)
            volume = normalize_intensity(volume.array, modality, name=volume.path)
        self.volume = check_normalized_volume(volume)
        self.num_classes = self.model.num_classes
        if not class_names and description is not None:
            class_names = description.class_names
        self.class_names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise InputError(f"{len(self.class_names)} class names given for a model with {self.num_classes} classes")
        depth, height, width = self.volume.shape
        self.native_size = (height, width)
        self.model_size = self.predictor.model_slice_size(self.native_size)
        self.padded_size = tuple(s + (-s) % self.model.size_divisibility for s in self.model_size)
        self.features = self._encode_all()
        self.auto_scores = self._automatic_scores()  # (K, Z, h, w) float16: round 0
        self.rounds: List[Round] = []
        self.pending: List[Click] = []
        self.sampled: Dict[int, torch.Tensor] = {}  # eq. 8's O_hat per class, after the last round
        # Labels of the fused scores, recomputed by result() only on the slices changed since.
        self._labels = np.zeros(self.volume.shape, dtype=np.uint8)
        self._stale_slices: Set[int] = set(range(depth))

    # ------------------------------------------------------------------ set-up (once per volume)
    @torch.inference_mode()
    def _encode_all(self) -> SliceFeatures:
        """Encode every slice once (batched) and keep the features for all later rounds.

        The decoder's query-independent per-slice work (memory projection, mask features with
        their position code and their resampling to the memory levels) is done here too, once:
        every round decodes many slices, and redoing it took a third of a round's time. The
        prepared features replace the raw ones, which nothing reads once they are prepared, and
        the memory's position code, the same on every slice, is stored once and broadcast.
        """
        depth, batch_size = self.volume.shape[0], self.predictor.slice_batch_size
        chunks: List[SliceFeatures] = []
        prepared: List[PreparedMemory] = []
        for start in range(0, depth, batch_size):
            chunk = self.predictor.encode_slices(self.volume, range(start, min(start + batch_size, depth)))
            with self.predictor.autocast():
                prepared.append(self.model.decoder.prepare_memory(chunk.multi_scale_features, chunk.mask_features))
            chunks.append(chunk)

        def cat(levels_of_chunk):
            return [torch.cat(levels) for levels in zip(*levels_of_chunk)]

        mask_features = torch.cat([p.mask_features for p in prepared])
        return SliceFeatures(
            mask_features=mask_features,
            multi_scale_features=[],  # only prepare_memory reads them, and it has run
            click_features={k: torch.cat([c.click_features[k] for c in chunks]) for k in chunks[0].click_features},
            input_size=chunks[0].input_size,
            prepared=PreparedMemory(
                memory=cat([p.memory for p in prepared]),
                # A view of one slice's code: it depends only on the level's size (as in prepare_memory).
                memory_pos=[pos[:1].expand(depth, -1, -1) for pos in prepared[0].memory_pos],
                level_mask_features=cat([p.level_mask_features for p in prepared]),
                mask_features=mask_features,
            ),
        )

    def features_of(self, z: int) -> SliceFeatures:
        return self.features.select(slice(z, z + 1))

    def _automatic_scores(self) -> torch.Tensor:
        depth = self.volume.shape[0]
        scores = None

        def store(z, slice_scores):
            nonlocal scores
            if scores is None:
                scores = torch.zeros((self.num_classes, depth) + tuple(slice_scores.shape[-2:]), dtype=torch.float16, device=slice_scores.device)
            scores[:, z] = slice_scores.to(torch.float16)

        self.predictor.automatic_scores(self.volume, features_of=self.features_of, on_slice=store)
        return scores

    # ------------------------------------------------------------------ user actions
    def click(self, slice: int, y: int, x: int, label: int) -> None:
        """Queue a click at voxel (slice, y, x) of the session volume; label 0 is a negative click."""
        depth, height, width = self.volume.shape
        for name, value, size in (("slice", slice, depth), ("y", y, height), ("x", x, width)):
            if not isinstance(value, (int, np.integer)) or not 0 <= int(value) < size:
                raise InputError(f"click {name} = {value!r} is outside the volume (valid: 0..{size - 1}; volume shape {self.volume.shape})")
        if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < self.num_classes:
            raise InputError(f"click label {label!r} is not a class of this model (valid: 0..{self.num_classes - 1}: {self.class_names})")
        # Every round in which a class is clicked adds one cluster centre of that class (eq. 8).
        centres = sum(1 for r in self.rounds if any(c.label == label for c in r.clicks))
        if centres >= self.model.interaction.max_clicks_per_class and not any(c.label == label for c in self.pending):
            raise InputError(
                f"class {label} ({self.class_names[int(label)]}) already has {centres} click-initialised cluster centres, "
                f"the maximum (MODEL.S2VNET.INTERACTION.MAX_CLICKS_PER_CLASS); reset({label}) to start it over"
            )
        self.pending.append(Click(int(slice), int(y), int(x), int(label)))

    def click_voxel(self, i: int, j: int, k: int, label: int) -> None:
        """Queue a click given in the ORIGINAL file's voxel grid (i, j, k) (needs a Volume input)."""
        if self.geometry is None:
            raise InputError("click_voxel needs a session opened on a Volume (with its file geometry)")
        self.click(*original_to_canonical_index(self.geometry, (i, j, k)), label)

    def run(self) -> SessionResult:
        """Run one refinement round with the pending clicks (if any) and return the fused result."""
        if self.pending:
            self.rounds.append(self._run_round(self.pending))
            self.pending = []
            self._stale_slices |= self.rounds[-1].slices
        return self.result()

    def undo(self) -> None:
        """Drop pending clicks if there are any, else the last round (restoring eq. 8's state)."""
        if self.pending:
            self.pending = []
            return
        if not self.rounds:
            return
        last = self.rounds.pop()
        self._stale_slices |= last.slices
        for label, previous in last.previous_features.items():
            if previous is None:
                self.sampled.pop(label, None)
            else:
                self.sampled[label] = previous

    def reset(self, label: int) -> None:
        """Forget every click of class ``label``: its scores return to the automatic prediction."""
        if not 0 <= int(label) < self.num_classes:
            raise InputError(f"reset label {label!r} is not a class of this model (valid: 0..{self.num_classes - 1})")
        for round_ in self.rounds:
            if round_.scores.pop(int(label), None) is not None:
                self._stale_slices |= round_.slices
            round_.clicks = [c for c in round_.clicks if c.label != label]
            round_.previous_features.pop(int(label), None)
        self.rounds = [r for r in self.rounds if r.clicks]
        self.pending = [c for c in self.pending if c.label != label]
        self.sampled.pop(int(label), None)

    # ------------------------------------------------------------------ rounds
    @torch.inference_mode()
    def _run_round(self, clicks: List[Click]) -> Round:
        model = self.model
        previous = {c.label: self.sampled.get(c.label) for c in clicks}
        # Eqs. 7-8: one new centroid per class clicked in this round, from the mean feature at its
        # clicks accumulated over its earlier rounds; it starts from every slice it was clicked on,
        # at the position of each click.
        accumulated = accumulate_clicks(
            model.click_encoder,
            self.features,
            batch_index=torch.tensor([c.z for c in clicks], device=model.device),
            points=torch.tensor([list(self._model_pixel(c.y, c.x)) for c in clicks], device=model.device),
            keys=[c.label for c in clicks],
            state=self.sampled,
            settings=model.interaction,
        )
        self.sampled.update(accumulated.features)
        with self.predictor.autocast():
            labels = torch.tensor([c.label for c in clicks], device=model.device)
            centroids = model.click_encoder(torch.stack([accumulated.features[c.label] for c in clicks]), labels, accumulated.positions)
        starts: Dict[int, List[Tuple[torch.Tensor, int]]] = {}
        for index, click in enumerate(clicks):
            starts.setdefault(click.z, []).append((centroids[index], click.label))

        scores: Dict[int, torch.Tensor] = {}
        reached: Set[int] = set()
        # The two directions are independent chains of slices: they run in lockstep, and each step
        # decodes the two directions' slices as one batch (on CPU a batch of two costs about 1.7
        # single decodes).
        sweeps = [_Sweep.starting(starts, direction, self.predictor.empty_tracks()) for direction in (1, -1)]
        while True:
            ready = [sweep for sweep in sweeps if not sweep.finished and self._advance(sweep, starts)]
            if not ready:
                return Round(list(clicks), scores, previous, reached)
            self._decode_step(ready, scores, reached)

    def _advance(self, sweep: "_Sweep", starts: Dict[int, List[Tuple[torch.Tensor, int]]]) -> bool:
        """Move ``sweep`` to its next slice with a live click centroid, adding the centroids that
        start on each slice it passes (each slice is passed once). False, and finished, when no
        click centroid is alive and none starts further on, or when it has left the volume."""
        depth = self.volume.shape[0]
        while 0 <= sweep.z < depth:
            if sweep.z in starts:
                sweep.tracks = add_click_tracks(sweep.tracks, self._new_tracks(starts[sweep.z]))
            if any(sweep.tracks.from_click()):
                return True
            if (sweep.z - sweep.last_start) * sweep.direction >= 0:
                break
            sweep.tracks = self.predictor.empty_tracks()  # nothing of this round to carry until the next click slice
            sweep.z += sweep.direction
        sweep.finished = True
        return False

    def _decode_step(self, ready: List["_Sweep"], scores: Dict[int, torch.Tensor], reached: Set[int]) -> None:
        """Decode the current slice of every ready sweep in one batch, record the click centroids'
        scores, and hand each sweep's identities over to its next slice.

        The slices are decoded as in training and in automatic mode: besides the click centroids,
        the learnable queries start identities for the classes nobody carries and these are handed
        over too. Only the click centroids' scores are recorded; the others are context, as the
        automatic pass already scored them.
        """
        model = self.model
        depth = self.volume.shape[0]
        index = slice(ready[0].z, ready[0].z + 1) if len(ready) == 1 else torch.tensor([sweep.z for sweep in ready], device=model.device)
        batch_tracks = Tracks.cat([replace(sweep.tracks, batch_index=torch.full_like(sweep.tracks.batch_index, b)) for b, sweep in enumerate(ready)])
        outputs = self.predictor.decode_slice(self.features.select(index, with_click_features=False), batch_tracks)
        first_track = 0
        for b, sweep in enumerate(ready):
            # This sweep's part of the batch, shaped as a one-slice decode.
            element = {key: outputs[key][b : b + 1] for key in ("pred_logits", "pred_masks", "query_embeddings", "query_padding_mask")}
            element["track_slot"] = outputs["track_slot"][first_track : first_track + len(sweep.tracks)]
            first_track += len(sweep.tracks)
            reached.add(sweep.z)
            clicks_alive = [e for e, from_click in enumerate(sweep.tracks.from_click()) if from_click]
            rows = model.num_learnable_queries + element["track_slot"][clicks_alive]
            labels = sweep.tracks.labels[clicks_alive]
            track_scores = identity_score(element["pred_logits"][0, rows], element["pred_masks"][0, rows], labels)
            for e, label in enumerate(labels.tolist()):
                if label not in scores:
                    scores[label] = torch.zeros((depth,) + tuple(track_scores.shape[-2:]), dtype=torch.float16, device=track_scores.device)
                # Eq. 9 within the round: a class clicked more than once keeps the best of its centroids.
                scores[label][sweep.z] = fuse_rounds(torch.stack([scores[label][sweep.z], track_scores[e].to(torch.float16)]))
            if model.propagation.enabled:
                sweep.tracks = self.predictor.continue_tracks(element, sweep.tracks, spawn_new=True)
            else:
                sweep.tracks = self.predictor.empty_tracks()
            sweep.z += sweep.direction

    def _new_tracks(self, entries: List[Tuple[torch.Tensor, int]]) -> Tracks:
        device = self.model.device
        queries = torch.stack([centroid for centroid, _ in entries])
        memory = None if self.model.aggregator is None else self.model.aggregator.initial(len(entries)).to(queries.dtype)
        return Tracks(
            queries=queries,
            labels=torch.tensor([label for _, label in entries], dtype=torch.int64, device=device),
            batch_index=torch.zeros(len(entries), dtype=torch.int64, device=device),
            memory=memory,
            origins=[CentroidOrigin.CLICK] * len(entries),
        )

    def _model_pixel(self, y: int, x: int) -> Tuple[int, int]:
        """A native-grid pixel on the (possibly resized) model input grid."""
        if self.model_size == self.native_size:
            return y, x
        scale_y = self.model_size[0] / self.native_size[0]
        scale_x = self.model_size[1] / self.native_size[1]
        return min(int((y + 0.5) * scale_y), self.model_size[0] - 1), min(int((x + 0.5) * scale_x), self.model_size[1] - 1)

    # ------------------------------------------------------------------ fusion (eq. 9)
    def fused_scores(self, z: int) -> torch.Tensor:
        """(K, h, w) scores of slice z: eq. 9, per class the max over round 0 (automatic) and every round."""
        round_scores = [(label, class_scores[z]) for round_ in self.rounds for label, class_scores in round_.scores.items()]
        automatic = self.auto_scores[:, z].float()
        if not round_scores:
            return automatic
        labels = torch.tensor([label for label, _ in round_scores], device=automatic.device)
        return fuse_identity_scores(automatic, torch.stack([scores.float() for _, scores in round_scores]), labels)

    def native_fused_scores(self, z: int) -> torch.Tensor:
        """(K, Y, X) fused class scores of slice z on the native slice grid."""
        return self.predictor.native_scores(self.fused_scores(z), self.model_size, self.native_size, self.padded_size)

    def native_fused_labels(self, z: int) -> torch.Tensor:
        """(Y, X) labels of slice z: the argmax of its fused scores' log-odds (no sigmoid needed)."""
        return scores_to_labels(self.predictor.native_log_odds(self.fused_scores(z), self.model_size, self.native_size, self.padded_size))

    def fused_probabilities(self) -> np.ndarray:
        """(K, Z, Y, X) float16 fused class scores of the whole volume (for saving)."""
        return np.stack([self.native_fused_scores(z).cpu().numpy().astype(np.float16) for z in range(self.volume.shape[0])], axis=1)

    def result(self) -> SessionResult:
        for z in sorted(self._stale_slices):
            self._labels[z] = self.native_fused_labels(z).cpu().numpy()
        self._stale_slices = set()
        labels = self._labels.copy()
        masks = {c: labels == c for c in range(1, self.num_classes)}
        return SessionResult(labels, masks)
