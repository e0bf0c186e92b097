"""Automatic volume inference (§4.1 "Testing: Automatic") and the sweep machinery it shares with
interactive sessions.

The backbone and pixel decoder do not depend on propagation, so they run batched over
``SLICE_BATCH_SIZE`` slices at a time; only the transformer decoder runs slice by slice, carrying
the identity tracks (handed-over centroids and their aggregation memories) from one slice to the
next. An automatic pass streams: each chunk of encoded slices is decoded and dropped before the
next is encoded, so peak memory does not grow with the number of slices (only the uint8 output
does).

Slices are fed at their native size (padded to a multiple of 32), or resized so that the longer
side is ``TEST.INPUT_SIZE``; predictions are returned on the native slice grid of the canonical
(z, y, x) volume. Writing them back onto the file's own grid is :func:`write_label_volume`'s job.
"""
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from s2vnet.modeling.postprocess import class_score_maps, resize_log_odds, scores_to_labels, upsample_log_odds
from s2vnet.modeling.propagation import inference_hand_over
from s2vnet.modeling.structures import SliceFeatures, Tracks
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class InferenceSettings:
    """How volumes are run through the network (the config's ``TEST`` keys): the one home of
    inference settings, for automatic prediction and interactive sessions alike."""

    slice_batch_size: int = 16  # slices per backbone + pixel-decoder batch
    amp_dtype: str = "bfloat16"  # autocast dtype on GPU ("bfloat16", "float16" or "float32" = off); CPU runs in fp32
    input_size: int = 0  # resize slices so that the longer side is this (0 = native size)
    compile_encoder: bool = False  # torch.compile the backbone + pixel decoder

    @classmethod
    def from_config(cls, cfg) -> "InferenceSettings":
        test = cfg.TEST
        return cls(test.SLICE_BATCH_SIZE, test.AMP_DTYPE, test.INPUT_SIZE, test.COMPILE)


@dataclass
class VolumePrediction:
    labels: np.ndarray  # (Z, Y, X) uint8, canonical orientation, native slice size
    scores: Optional[np.ndarray] = None  # (K, Z, Y, X) float16 class scores in [0, 1], if requested


class VolumePredictor:
    """Runs an :class:`~s2vnet.modeling.meta_arch.S2VNet` over whole volumes.

    Args:
        model: the network (put in eval mode here).
        slice_batch_size: slices per backbone + pixel-decoder batch.
        amp_dtype: autocast dtype on GPU ("bfloat16", "float16" or "float32" = off). CPU runs in fp32.
        input_size: resize slices so that the longer side is this (0 = native size).
        compile_encoder: ``torch.compile`` the backbone + pixel decoder.
        description: what the checkpoint says about the model (class names, modality), if known.
    """

    def __init__(
        self,
        model,
        slice_batch_size: int = 16,
        amp_dtype: str = "bfloat16",
        input_size: int = 0,
        compile_encoder: bool = False,
        description=None,
    ):
        if slice_batch_size < 1:
            raise InputError(f"slice batch size must be >= 1, got {slice_batch_size}")
        self.model = model.eval()
        self.slice_batch_size = slice_batch_size
        self.input_size = input_size
        device_type = model.device.type
        self.autocast_dtype = _DTYPES[amp_dtype] if device_type == "cuda" else torch.float32
        if self.autocast_dtype == torch.bfloat16 and device_type == "cuda" and not torch.cuda.is_bf16_supported():
            self.autocast_dtype = torch.float16
        self._encode = torch.compile(model.encode) if compile_encoder else model.encode
        self.encoder_calls = 0  # number of encoder batches run (tests check that clicks reuse features)
        # A ModelDescription (s2vnet.checkpoint) when the weights came with one: sessions and
        # predict.py take class names and modality from it.
        self.description = description

    @classmethod
    def from_config(cls, cfg, model, description=None) -> "VolumePredictor":
        settings = InferenceSettings.from_config(cfg)
        return cls(model, settings.slice_batch_size, settings.amp_dtype, settings.input_size, settings.compile_encoder, description)

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        enabled = self.autocast_dtype != torch.float32
        return torch.autocast(device_type=self.model.device.type, dtype=self.autocast_dtype if enabled else torch.bfloat16, enabled=enabled)

    def model_slice_size(self, native_size: Tuple[int, int]) -> Tuple[int, int]:
        """Slice size fed to the network (before padding to a multiple of 32)."""
        if not self.input_size:
            return native_size
        scale = self.input_size / max(native_size)
        return (max(1, round(native_size[0] * scale)), max(1, round(native_size[1] * scale)))

    def prepare_slices(self, volume: np.ndarray, indices: Sequence[int]) -> torch.Tensor:
        """uint8 slices (N, h, w) as the network takes them (resized if TEST.INPUT_SIZE is set)."""
        slices = torch.from_numpy(np.ascontiguousarray(volume[list(indices)]))
        size = self.model_slice_size(tuple(volume.shape[1:]))
        if size != tuple(volume.shape[1:]):
            resized = F.interpolate(slices[:, None].float(), size=size, mode="bilinear", align_corners=False)
            slices = resized[:, 0].round().clamp(0, 255).to(torch.uint8)
        return slices

    @torch.inference_mode()
    def encode_slices(self, volume: np.ndarray, indices: Sequence[int]) -> SliceFeatures:
        with self.autocast():
            features = self._encode(self.prepare_slices(volume, indices).to(self.model.device))
        self.encoder_calls += 1
        return features

    def stream_features(self, volume: np.ndarray, order: Sequence[int]) -> Iterator[Tuple[int, SliceFeatures]]:
        """(slice index, its features) in ``order``, encoding ``slice_batch_size`` slices at a time."""
        for start in range(0, len(order), self.slice_batch_size):
            chunk = list(order[start : start + self.slice_batch_size])
            features = self.encode_slices(volume, chunk)
            for offset, z in enumerate(chunk):
                selected = features.select(slice(offset, offset + 1))
                if offset == len(chunk) - 1:
                    # The caller still holds this slice while the next chunk is encoded: a view
                    # would keep the whole chunk alive, so peak memory would be two chunks.
                    selected = selected.clone()
                yield z, selected
            del features

    def native_log_odds(self, scores: torch.Tensor, model_size: Tuple[int, int], native_size: Tuple[int, int], padded_size) -> torch.Tensor:
        """(K, h/4, w/4) scores on the padded model input -> (K, Y, X) log-odds on the native slice
        grid: their argmax is the label map, their sigmoid the scores (:meth:`native_scores`)."""
        full = upsample_log_odds(scores, padded_size)[:, : model_size[0], : model_size[1]]
        if tuple(model_size) != tuple(native_size):
            full = resize_log_odds(full, native_size)
        return full

    def native_scores(self, scores: torch.Tensor, model_size: Tuple[int, int], native_size: Tuple[int, int], padded_size) -> torch.Tensor:
        """(K, h/4, w/4) scores on the padded model input -> (K, Y, X) scores on the native slice grid."""
        return self.native_log_odds(scores, model_size, native_size, padded_size).sigmoid()

    # ------------------------------------------------------------------ the per-slice step
    @torch.inference_mode()
    def decode_slice(self, features: SliceFeatures, tracks: Tracks):
        with self.autocast():
            return self.model.decode(features, tracks, all_layer_masks=False)

    def continue_tracks(self, outputs, tracks: Tracks, spawn_new: bool) -> Tracks:
        """The identities of the next slice: the inference hand-over rule,
        :func:`s2vnet.modeling.propagation.inference_hand_over`, in this predictor's precision."""
        model = self.model
        with torch.inference_mode(), self.autocast():
            return inference_hand_over(
                outputs, tracks, model.num_learnable_queries, model.aggregator, model.propagation.score_threshold, spawn_new
            )

    def empty_tracks(self) -> Tracks:
        return self.model.empty_tracks()

    # ------------------------------------------------------------------ automatic mode
    def automatic_scores(
        self,
        volume: np.ndarray,
        features_of: Optional[Callable[[int], SliceFeatures]] = None,
        on_slice: Optional[Callable[[int, torch.Tensor], None]] = None,
    ) -> None:
        """Sweep first to last slice (§4.1), calling ``on_slice(z, scores)`` with each slice's
        (K, h/4, w/4) class scores on the padded model input. ``features_of`` serves cached features
        (interactive sessions); otherwise features are streamed in chunks."""
        order = list(range(volume.shape[0]))
        source = ((z, features_of(z)) for z in order) if features_of else self.stream_features(volume, order)
        tracks = self.empty_tracks()
        for z, features in source:
            outputs = self.decode_slice(features, tracks)
            valid = ~outputs["query_padding_mask"][0]
            on_slice(z, class_score_maps(outputs["pred_logits"][0], outputs["pred_masks"][0], valid))
            if self.model.propagation.enabled:
                tracks = self.continue_tracks(outputs, tracks, spawn_new=True)

    @torch.inference_mode()
    def predict_automatic(self, volume, return_scores: bool = False) -> VolumePrediction:
        """Segment a whole volume: ``volume`` is uint8 (Z, Y, X) in canonical orientation (a numpy
        array or tensor, already intensity-normalised, see :func:`normalize_intensity`)."""
        volume = check_normalized_volume(volume)
        depth, height, width = volume.shape
        model_size = self.model_slice_size((height, width))
        padded = tuple(s + (-s) % self.model.size_divisibility for s in model_size)
        labels = np.zeros((depth, height, width), dtype=np.uint8)
        scores_out = np.zeros((self.model.num_classes, depth, height, width), dtype=np.float16) if return_scores else None

        def store(z, scores):
            native = self.native_log_odds(scores, model_size, (height, width), padded)
            labels[z] = scores_to_labels(native).cpu().numpy()
            if scores_out is not None:
                scores_out[:, z] = native.sigmoid().cpu().numpy().astype(np.float16)

        self.automatic_scores(volume, on_slice=store)
        return VolumePrediction(labels, scores_out)


def check_normalized_volume(volume) -> np.ndarray:
    """``volume`` as the uint8 (Z, Y, X) numpy array the network takes (intensities already
    normalised by :func:`s2vnet.data.intensity.normalize_intensity`), or an InputError saying why not."""
    if isinstance(volume, torch.Tensor):
        volume = volume.cpu().numpy()
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"expected a (Z, Y, X) volume, got an array of shape {volume.shape}")
    if volume.dtype != np.uint8:
        raise InputError(
            f"expected a uint8 volume (intensities normalised by s2vnet.data.intensity.normalize_intensity), got {volume.dtype}"
        )
    if min(volume.shape) == 0:
        raise InputError(f"volume of shape {volume.shape} is empty")
    return volume
