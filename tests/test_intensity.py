"""Tests for s2vnet.data.intensity: CT window, MRI percentile clipping, modality helpers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s2vnet.data.intensity import CT_WINDOW, amos_modality, modality_from_channel_name, normalize_intensity
from s2vnet.data.volume_io import read_volume
from s2vnet.utils.errors import InputError


def test_ct_window_edges_and_clipping() -> None:
    hu = np.array([-3000.0, -1000.0, -176.0, -175.0, -174.0, 0.0, 38.0, 249.0, 250.0, 251.0, 3000.0])
    out = normalize_intensity(hu, "CT")
    assert out.dtype == np.uint8 and out.shape == hu.shape
    # Hand computation: (hu + 175) * 255 / 425 = (hu + 175) * 0.6, rounded.
    expected = [0, 0, 0, 0, 1, 105, 128, 254, 255, 255, 255]  # 38 -> 127.8, 249 -> 254.4, -174 -> 0.6
    np.testing.assert_array_equal(out, expected)


def test_ct_every_integer_hu_in_the_window() -> None:
    hu = np.arange(CT_WINDOW[0], CT_WINDOW[1] + 1, dtype=np.int16)
    expected = np.floor((hu.astype(np.float64) + 175.0) * 0.6 + 0.5)  # no .5 ties occur for integer HU
    np.testing.assert_array_equal(normalize_intensity(hu, "ct"), expected)


def test_ct_on_real_volume(real_ct_path: Path) -> None:
    volume = read_volume(real_ct_path)
    out = normalize_intensity(volume.array, "CT", name=str(real_ct_path))
    assert out.dtype == np.uint8 and out.shape == volume.array.shape
    # Air (about -1000 HU) is clipped to 0 and dense bone (> 250 HU) to 255; soft tissue is in between.
    assert out[volume.array <= -175].max() == 0
    assert out[volume.array >= 250].min() == 255
    soft = (volume.array > 0) & (volume.array < 80)
    assert 100 <= out[soft].min() and out[soft].max() <= 154


def test_mri_percentile_clipping_ignores_outliers() -> None:
    rng = np.random.default_rng(0)
    body = np.linspace(100.0, 200.0, 9920)
    # 40 extreme voxels each side (0.4% < 0.5%): the percentiles fall inside the body's range.
    values = np.concatenate([body, np.full(40, -1e6), np.full(40, 1e6)])
    volume = rng.permutation(values).reshape(10, 20, 50)
    out = normalize_intensity(volume, "MR")
    assert out.dtype == np.uint8 and out.shape == volume.shape
    assert np.all(out[volume == -1e6] == 0) and np.all(out[volume == 1e6] == 255)
    # With min-max scaling the whole body would collapse onto ~127; percentile clipping spreads it.
    body_out = out[(volume >= 100) & (volume <= 200)]
    assert body_out.min() == 0 and body_out.max() == 255
    # Linear in between: the body's centre (150, also the centre of the window) maps to ~127.5.
    assert abs(int(out.flat[np.argmin(np.abs(volume - 150.0))]) - 127.5) <= 1.5
    # The 0.5% darkest and brightest voxels (outliers plus 10 body voxels each) are clipped; about
    # 20 more body voxels (within half a grey level, ~0.2, of the window edge at 0.01 steps) round
    # onto 0 or 255. Min-max scaling would give exactly 40.
    for level in (0, 255):
        assert 50 <= np.count_nonzero(out == level) <= 75


def test_mri_modality_names_are_case_insensitive() -> None:
    volume = np.random.default_rng(1).normal(500.0, 100.0, size=(4, 5, 6))
    reference = normalize_intensity(volume, "MR")
    for name in ("mr", "MRI", "Mri", " MR "):
        np.testing.assert_array_equal(normalize_intensity(volume, name), reference)


def test_constant_mri_volume_gives_zeros() -> None:
    out = normalize_intensity(np.full((3, 4, 5), 42.0, dtype=np.float32), "MRI")
    assert out.dtype == np.uint8
    assert not out.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    volume = np.zeros((3, 4, 5), dtype=np.float32)
    volume[1, 2, 3] = bad
    for modality in ("CT", "MR"):
        with pytest.raises(InputError, match="case_007.*1 of 60 values are NaN or inf"):
            normalize_intensity(volume, modality, name="case_007")


@pytest.mark.parametrize("modality", ["PET", "", "X-ray"])
def test_unknown_modality_is_refused(modality: str) -> None:
    with pytest.raises(InputError, match="unknown modality"):
        normalize_intensity(np.zeros((2, 2, 2)), modality)


@pytest.mark.parametrize(
    "name, expected",
    [("CT", "CT"), ("ct", "CT"), (" CT ", "CT"), ("MRI", "MR"), ("MR", "MR"), ("T1", "MR"), ("T2", "MR"),
     ("T1w", "MR"), ("FLAIR", "MR"), ("ADC", "MR"), ("DWI", "MR"), ("noNorm", "MR"), ("zscore", "MR"), ("CTA", "MR")],
)
def test_modality_from_channel_name(name: str, expected: str) -> None:
    assert modality_from_channel_name(name) == expected


def test_modality_from_empty_channel_name_is_refused() -> None:
    with pytest.raises(InputError):
        modality_from_channel_name("  ")


@pytest.mark.parametrize(
    "case_id, expected",
    [(1, "CT"), (499, "CT"), (500, "MR"), (600, "MR"), ("amos_0001", "CT"), ("amos_0410", "CT"), ("amos_0507", "MR"),
     ("0507", "MR"), ("amos_0507.nii.gz", "MR"), ("amos_0123_0000.nii.gz", "CT"),
     ("/data/amos2022/imagesVa/amos_0123.nii.gz", "CT")],
)
def test_amos_modality(case_id, expected: str) -> None:
    assert amos_modality(case_id) == expected


@pytest.mark.parametrize("case_id", ["amos_", "case", -3, 1.5])
def test_amos_modality_refuses_ids_without_a_number(case_id) -> None:
    with pytest.raises(InputError):
        amos_modality(case_id)
