"""Training mapper: one volume record -> one clip of ordered slices, augmented as one.

The same large-scale jittering (LSJ: random rescale in [MIN_SCALE, MAX_SCALE] of the target size,
then a fixed-size crop, §4.1) and the same horizontal flip are applied to every slice of a clip:
the transforms are drawn once, on the first slice, and replayed on the others, so the anatomy
stays aligned across the clip as it is in the volume.

Crop padding is *not* background: background is a real class here (label 0). Labels are padded
with the ignore value and images with 0 (air in the CT window), and the model leaves ignored
pixels out of every loss. (Detectron2's own FixedSizeCrop padding would pad labels with 0.)

Output, per clip:
    image      uint8 tensor (T, S, S)
    sem_seg    int64 tensor (T, S, S), ignore value on padding
    instances  list of T Detectron2 ``Instances``: gt_classes and gt_masks, one per class present
    case_id, slice_indices
"""
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from s2vnet.data.clip_sampling import sample_clip
from s2vnet.data.prepare import PreparedVolume, case_cache_dir
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)


class ClipDatasetMapper:
    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        cache_root: str,
        image_size: int,
        min_scale: float,
        max_scale: float,
        random_flip: str,
        ignore_label: int,
        num_slices: int,
        strides: Sequence[int],
        random_direction: bool,
        foreground_ratio: float,
        rare_class_balance: bool,
        organ_end_ratio: float = 0.0,
        max_open_volumes: int = 64,
    ):
        self.is_train = is_train
        self.cache_root = cache_root
        self.image_size = image_size
        self.ignore_label = ignore_label
        self.clip_args = {
            "num_slices": num_slices,
            "strides": tuple(strides),
            "random_direction": random_direction,
            "foreground_ratio": foreground_ratio,
            "rare_class_balance": rare_class_balance,
            "organ_end_ratio": organ_end_ratio,
        }
        self.augmentations = [
            T.ResizeScale(min_scale=min_scale, max_scale=max_scale, target_height=image_size, target_width=image_size),
            T.FixedSizeCrop(crop_size=(image_size, image_size), pad=False),
        ]
        if random_flip == "horizontal":
            self.augmentations.append(T.RandomFlip(horizontal=True, vertical=False))
        # Memory-mapped volumes stay open per worker; a bounded LRU keeps file handles in check.
        self._open: "OrderedDict[str, PreparedVolume]" = OrderedDict()
        self._max_open = max_open_volumes
        self._rng: Optional[np.random.Generator] = None

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        clip = cfg.INPUT.CLIP
        return {
            "is_train": is_train,
            "cache_root": cfg.DATASETS.CACHE_DIR,
            "image_size": cfg.INPUT.IMAGE_SIZE,
            "min_scale": cfg.INPUT.MIN_SCALE,
            "max_scale": cfg.INPUT.MAX_SCALE,
            "random_flip": cfg.INPUT.RANDOM_FLIP,
            "ignore_label": cfg.INPUT.IGNORE_LABEL,
            "num_slices": clip.NUM_SLICES,
            "strides": list(clip.STRIDES),
            "random_direction": clip.RANDOM_DIRECTION,
            "foreground_ratio": clip.FOREGROUND_RATIO,
            "rare_class_balance": clip.RARE_CLASS_BALANCE,
            "organ_end_ratio": clip.ORGAN_END_RATIO,
        }

    @property
    def rng(self) -> np.random.Generator:
        # Created lazily inside each data-loader worker, from numpy's global state, which Detectron2
        # seeds per worker (worker_init_reset_seed): workers draw different clips, runs repeat.
        if self._rng is None:
            self._rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        return self._rng

    def volume(self, record: Dict) -> PreparedVolume:
        root = MetadataCatalog.get(record["dataset_name"]).root
        case_dir = str(case_cache_dir(self.cache_root, root, record["image_file"]))
        if case_dir in self._open:
            self._open.move_to_end(case_dir)
            return self._open[case_dir]
        volume = PreparedVolume(case_dir)
        if volume.label is None:
            raise InputError(f"{case_dir}: training needs labels, but this volume was prepared without them")
        self._open[case_dir] = volume
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return volume

    def __call__(self, record: Dict) -> Dict:
        return self.clip_from_volume(self.volume(record))

    def clip_from_volume(self, volume: PreparedVolume) -> Dict:
        """Sample, read (from the memory map) and augment one clip of a prepared volume."""
        indices = sample_clip(volume.slice_classes, self.rng, **self.clip_args)
        images = np.asarray(volume.image[indices])  # (T, H, W) uint8, read from the memory map
        labels = np.asarray(volume.label[indices])
        images, labels = self.augment(images, labels)
        sem_seg = torch.from_numpy(labels.astype(np.int64))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(images)),
            "sem_seg": sem_seg,
            "instances": [instances_from_sem_seg(s, self.ignore_label) for s in sem_seg],
            "case_id": volume.case_id,
            "slice_indices": indices,
        }

    def augment(self, images: np.ndarray, labels: np.ndarray):
        """Draw LSJ + flip on the first slice, replay the same transforms on every slice."""
        aug_input = T.AugInput(images[0], sem_seg=labels[0])
        transforms = T.AugmentationList(self.augmentations)(aug_input)
        out_images = np.stack([transforms.apply_image(image) for image in images])
        out_labels = np.stack([transforms.apply_segmentation(label) for label in labels])
        # Pad to the fixed size: images with 0, labels with the ignore value (not background).
        pad_h = self.image_size - out_images.shape[1]
        pad_w = self.image_size - out_images.shape[2]
        if pad_h > 0 or pad_w > 0:
            out_images = np.pad(out_images, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=0)
            out_labels = np.pad(out_labels, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=self.ignore_label)
        return out_images, out_labels

def instances_from_sem_seg(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """Per-class binary masks of one slice (gt_classes, gt_masks), as Mask2Former's semantic mapper
    makes them; background (0) is a class with its own mask, ignored pixels belong to none."""
    classes = torch.unique(sem_seg)
    classes = classes[classes != ignore_label]
    result = Instances(tuple(sem_seg.shape))
    result.gt_classes = classes.to(torch.int64)
    result.gt_masks = BitMasks(sem_seg[None] == classes[:, None, None])
    return result


def check_prepared(dataset_names: Sequence[str], cache_root: str) -> List[str]:
    """Case folders missing from the cache for these data sets (empty when all are prepared)."""
    from detectron2.data import DatasetCatalog

    from s2vnet.data.prepare import is_prepared

    missing = []
    for name in dataset_names:
        root = MetadataCatalog.get(name).root
        for record in DatasetCatalog.get(name):
            case_dir = case_cache_dir(cache_root, root, record["image_file"])
            if not is_prepared(Path(case_dir)):
                missing.append(str(case_dir))
    return missing
