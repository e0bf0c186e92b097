"""Training clips: one LSJ + flip for every slice of a clip, ignore-padding, foreground sampling."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from s2vnet.data.clip_mapper import ClipDatasetMapper
from s2vnet.data.clip_sampling import sample_clip
from s2vnet.data.prepare import FORMAT_VERSION, PreparedVolume


def _mapper(image_size=64, min_scale=0.5, max_scale=1.75, flip="horizontal", **clip):
    cfg = tiny_config()
    cfg.INPUT.IMAGE_SIZE = image_size
    cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE = min_scale, max_scale
    cfg.INPUT.RANDOM_FLIP = flip
    for key, value in clip.items():
        setattr(cfg.INPUT.CLIP, key, value)
    return ClipDatasetMapper(cfg, True)


def _pattern_volume(tmp_path: Path, depth=5, size=48) -> PreparedVolume:
    """Every slice carries the same asymmetric pattern, brightened by 10 per slice index, and the
    same labels: after a shared transform, slice t must equal slice 0 plus 10 t."""
    yy, xx = np.mgrid[:size, :size]
    pattern = ((xx * 3 + yy) % 120).astype(np.uint8)  # asymmetric: flips and crops are visible
    image = np.stack([pattern + 10 * t for t in range(depth)]).astype(np.uint8)
    labels = np.zeros((depth, size, size), np.uint8)
    labels[:, 5:20, 8:30] = 1
    labels[:, 30:44, 25:40] = 2
    case = tmp_path / "case"
    case.mkdir()
    np.save(case / "image.npy", image)
    np.save(case / "label.npy", labels)
    meta = {"format_version": FORMAT_VERSION, "case_id": "pattern", "spacing": [1, 1, 1], "shape": list(image.shape),
            "slice_classes": [[0, 1, 2]] * depth, "geometry": {}}
    (case / "meta.json").write_text(json.dumps(meta))
    return PreparedVolume(case)


def test_one_transform_is_applied_to_every_slice_of_a_clip(tmp_path):
    volume = _pattern_volume(tmp_path)
    mapper = _mapper(image_size=40)
    mapper._rng = np.random.default_rng(0)
    np.random.seed(0)
    for _ in range(10):
        images, labels = mapper.augment(np.asarray(volume.image[[0, 2, 4]]), np.asarray(volume.label[[0, 2, 4]]))
        assert images.shape == (3, 40, 40) and labels.shape == (3, 40, 40)
        base = images[0].astype(int)
        valid = labels[0] != 255
        for t, index in enumerate((2, 4), start=1):
            difference = images[t].astype(int) - base
            # Same geometry: the intensity offset survives exactly up to interpolation rounding.
            assert np.abs(difference[valid] - 10 * index).max() <= 1
            assert np.array_equal(labels[t], labels[0])


def test_transforms_vary_between_clips(tmp_path):
    volume = _pattern_volume(tmp_path)
    mapper = _mapper(image_size=40)
    np.random.seed(1)
    outputs = [mapper.augment(np.asarray(volume.image[[0, 1, 2]]), np.asarray(volume.label[[0, 1, 2]]))[0][0] for _ in range(6)]
    assert len({o.tobytes() for o in outputs}) > 1


def test_padding_uses_the_ignore_label_not_background(tmp_path):
    volume = _pattern_volume(tmp_path, size=48)
    # Scale 0.5 of a 64 target -> a 32-pixel image inside a 64 crop: most of it is padding.
    mapper = _mapper(image_size=64, min_scale=0.5, max_scale=0.5, flip="none")
    images, labels = mapper.augment(np.asarray(volume.image[[0, 1, 2]]), np.asarray(volume.label[[0, 1, 2]]))
    assert (labels[:, 40:, :] == 255).all() and (labels[:, :, 40:] == 255).all()
    assert (images[:, 40:, :] == 0).all()
    assert (labels[:, :30, :30] != 255).all()
    # Background (0) remains where the image really is background.
    assert (labels[:, :30, :30] == 0).any()


def test_mapper_output_contract(prepared_phantom):
    from detectron2.data import DatasetCatalog

    cfg, _ = prepared_phantom
    mapper = ClipDatasetMapper(cfg, True)
    record = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0]
    np.random.seed(0)
    clip = mapper(record)
    size = cfg.INPUT.IMAGE_SIZE
    assert clip["image"].shape == (3, size, size) and clip["image"].dtype == torch.uint8
    assert clip["sem_seg"].shape == (3, size, size) and clip["sem_seg"].dtype == torch.int64
    assert len(clip["instances"]) == 3
    for t, instances in enumerate(clip["instances"]):
        masks = instances.gt_masks.tensor
        assert masks.shape[1:] == (size, size)
        for c, mask in zip(instances.gt_classes.tolist(), masks):
            assert torch.equal(mask, clip["sem_seg"][t] == c)
        assert 255 not in instances.gt_classes.tolist()
    steps = np.diff(clip["slice_indices"])
    assert len(set(steps.tolist())) == 1 and abs(steps[0]) >= 1  # ordered, one stride


def test_clip_sampling_favours_foreground():
    slice_classes = [[0]] * 90 + [[0, 1]] * 8 + [[0, 2]] * 2  # 10 % foreground, class 2 rare
    rng = np.random.default_rng(0)
    starts = [sample_clip(slice_classes, rng, foreground_ratio=0.9)[0] for _ in range(2000)]
    foreground = np.mean([s >= 90 for s in starts])
    assert foreground == pytest.approx(0.9 + 0.1 * 0.1, abs=0.03)
    # Class balance: the 2 slices of class 2 start as many clips as the 8 slices of class 1.
    class_two = np.mean([s >= 98 for s in starts])
    assert class_two == pytest.approx(0.45, abs=0.04)
    uniform = [sample_clip(slice_classes, rng, foreground_ratio=0.0)[0] for _ in range(2000)]
    assert np.mean([s >= 90 for s in uniform]) == pytest.approx(0.1, abs=0.03)


def test_organ_end_clips_cross_the_end_of_an_organ():
    slice_classes = [[0]] * 10 + [[0, 1]] * 20 + [[0]] * 10  # organ on slices 10..29
    rng = np.random.default_rng(0)
    crossing = 0
    for _ in range(500):
        clip = sample_clip(slice_classes, rng, num_slices=3, foreground_ratio=1.0, organ_end_ratio=1.0)
        present = [1 in slice_classes[z] for z in clip]
        assert present[0]  # starts on the organ ...
        crossing += not all(present)  # ... and leaves it
    assert crossing == 500
    # Without organ-end clips, most foreground clips stay inside the organ.
    inside = [all(1 in slice_classes[z] for z in sample_clip(slice_classes, rng, foreground_ratio=1.0)) for _ in range(500)]
    assert np.mean(inside) > 0.8


def test_clip_direction_stride_and_short_volumes():
    rng = np.random.default_rng(0)
    slice_classes = [[0, 1]] * 20
    clips = [sample_clip(slice_classes, rng, num_slices=3, strides=(2,)) for _ in range(200)]
    for clip in clips:
        assert all(0 <= z < 20 for z in clip)
        assert abs(clip[1] - clip[0]) == 2 and clip[2] - clip[1] == clip[1] - clip[0]
    assert {np.sign(c[1] - c[0]) for c in clips} == {-1, 1}  # both directions
    assert all(c[1] > c[0] for c in (sample_clip(slice_classes, rng, random_direction=False) for _ in range(50)) if c[0] < 18)
    # A volume shorter than the clip still gives a valid clip.
    assert sample_clip([[0, 1], [0, 1]], rng, num_slices=3) in ([0, 1, 1], [1, 0, 0])
