"""Tests for s2vnet.data.phantom and tools/make_phantoms.py: synthetic CT volumes and datasets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from s2vnet.data.phantom import (
    CLASS_NAMES,
    LABEL_IDS,
    Phantom,
    case_seed,
    generate_phantom,
    write_phantom_dataset,
)
from s2vnet.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]
TYPICAL_SEEDS = (0, 1, 2)
SMALL = (32, 64, 64)

# Intended interior means (HU) of the homogeneous organs, with room for per-case contrast
# jitter, partial volume and the intrahepatic/renal sub-structures.
INTENDED_HU = {
    "liver": (40, 85),
    "spleen": (25, 70),
    "kidney": (100, 165),
    "gallbladder": (-15, 35),
    "pancreas": (20, 65),
    "aorta": (135, 225),
}


@pytest.fixture(scope="module")
def phantoms() -> list[Phantom]:
    return [generate_phantom(seed) for seed in TYPICAL_SEEDS]


def _interior(mask: np.ndarray) -> np.ndarray:
    """The mask minus its in-plane border, so partial-volume voxels do not bias the statistics."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_erosion(mask, structure)


def _smoothed_profile(area: np.ndarray) -> np.ndarray:
    return np.convolve(area, np.ones(3) / 3, mode="same")


# ---------------------------------------------------------------------------------------------
# The volume itself
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays_and_different_seeds_differ() -> None:
    a, b, c = generate_phantom(5, SMALL), generate_phantom(5, SMALL), generate_phantom(6, SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.spacing == b.spacing
    assert not np.array_equal(a.labels, c.labels)
    assert np.mean(a.image != c.image) > 0.5
    assert a.spacing != c.spacing


@pytest.mark.parametrize("shape", [(64, 128, 128), (32, 64, 64), (64, 256, 256), (40, 96, 80)])
def test_shapes_dtypes_and_spacing(shape: tuple[int, int, int]) -> None:
    p = generate_phantom(11, shape)
    assert p.image.shape == shape and p.labels.shape == shape
    assert p.image.dtype == np.int16 and p.labels.dtype == np.uint8
    assert p.class_names == list(CLASS_NAMES) and p.class_names[0] == "background"
    assert int(p.labels.max()) < len(p.class_names)
    sz, sy, sx = p.spacing
    assert sy == sx  # square pixels, like real CT
    # The whole abdomen fits: field of view 300-520 mm, scan range 250-400 mm.
    assert 300 < shape[2] * sx < 500 and 300 < shape[1] * sy < 520
    assert 250 < shape[0] * sz < 400
    # The body never touches the edge of the field of view.
    body = p.image > -500
    assert not body[:, :, [0, -1]].any() and not body[:, -1, :].any()
    np.testing.assert_allclose(np.diag(p.affine())[:3], [sx, sy, sz])


def test_spacing_varies_between_cases() -> None:
    spacings = np.array([generate_phantom(seed, SMALL).spacing for seed in range(6)])
    assert np.ptp(spacings[:, 0]) > 0.3 and np.ptp(spacings[:, 1]) > 0.3


def test_typical_case_contains_all_organs(phantoms: list[Phantom]) -> None:
    for p in phantoms:
        present = set(np.unique(p.labels).tolist()) - {0}
        assert len(present) >= 5
        assert present == set(range(1, len(CLASS_NAMES)))


def test_end_slices_are_almost_empty_and_middle_slices_are_crowded(phantoms: list[Phantom]) -> None:
    for p in phantoms:
        nz = p.labels.shape[0]
        for k in (0, 1, nz - 2, nz - 1):
            classes = set(np.unique(p.labels[k]).tolist()) - {0}
            assert len(classes) <= 1, (k, classes)  # at most the aorta passing through
            assert (p.labels[k] > 0).mean() < 0.01
        per_slice = [len(set(np.unique(p.labels[k]).tolist()) - {0}) for k in range(nz)]
        middle = per_slice[nz // 4 : 3 * nz // 4]
        assert max(middle) >= 5
        assert sum(n >= 3 for n in middle) >= nz // 8


def test_each_organ_appears_grows_and_vanishes_along_z(phantoms: list[Phantom]) -> None:
    for p in phantoms:
        nz = p.labels.shape[0]
        for name in CLASS_NAMES[1:]:
            area = (p.labels == LABEL_IDS[name]).sum(axis=(1, 2)).astype(float)
            occupied = np.nonzero(area)[0]
            first, last = int(occupied.min()), int(occupied.max())
            if name == "aorta":  # runs up into the chest, but ends at its bifurcation
                assert first > 0 and last == nz - 1
                continue
            assert first > 0 and last < nz - 1, name  # vanishes inside the volume, both ends
            assert last - first >= 5, name
            peak = int(np.argmax(area))
            assert first < peak < last, name
            assert max(area[first], area[last]) < 0.75 * area[peak], name
            # Mostly rising up to the peak, mostly falling after it.
            profile = _smoothed_profile(area)
            rising = np.diff(profile[first : peak + 1])
            falling = np.diff(profile[peak : last + 1])
            assert (rising > 0).mean() >= 0.5 and (falling < 0).mean() >= 0.5, name


def test_anatomy_is_left_right_asymmetric_and_ordered_along_z(phantoms: list[Phantom]) -> None:
    """RAS (z, y, x): liver on the patient's right (large x), spleen left, spine posterior."""
    for p in phantoms:
        centre = {name: np.argwhere(p.labels == LABEL_IDS[name]).mean(axis=0) for name in CLASS_NAMES[1:]}
        assert centre["liver"][2] > centre["spleen"][2] + 10
        assert centre["liver"][0] > centre["kidney"][0]  # liver is superior to the kidneys
        bone = np.argwhere(p.image > 400)
        spine = bone[np.abs(bone[:, 2] - centre["aorta"][2]) < 5]  # bone in the aorta's columns
        assert np.median(spine[:, 1]) < centre["aorta"][1] < centre["gallbladder"][1]  # posterior -> anterior


def test_hu_values_are_plausible(phantoms: list[Phantom]) -> None:
    for p in phantoms:
        corner = p.image[:, -8:, :8].astype(float)  # anterior corner: outside the body
        assert -1030 < corner.mean() < -970
        assert 8 < corner.std() < 30  # noise of a real scanner, not a clean drawing
        for name, (low, high) in INTENDED_HU.items():
            mean = p.image[_interior(p.labels == LABEL_IDS[name])].mean()
            assert low < mean < high, (name, mean)
        stomach = p.image[p.labels == LABEL_IDS["stomach"]]
        assert stomach.min() < -500 or np.median(stomach) < 30  # gas or fluid in its lumen
        assert (p.image > 400).sum() > 100  # bone


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap coefficient of two intensity histograms (0 = disjoint, 1 = identical)."""
    bins = np.arange(-200, 400, 5)
    ha = np.histogram(a, bins)[0] / a.size
    hb = np.histogram(b, bins)[0] / b.size
    return float(np.minimum(ha, hb).sum())


def test_organ_intensities_overlap_so_thresholding_is_not_enough(phantoms: list[Phantom]) -> None:
    for p in phantoms:
        values = {name: p.image[_interior(p.labels == LABEL_IDS[name])] for name in CLASS_NAMES[1:]}
        pairs = [("liver", "spleen"), ("spleen", "pancreas"), ("kidney", "aorta")]
        overlapping = [pair for pair in pairs if _overlap(values[pair[0]], values[pair[1]]) > 0.2]
        assert len(overlapping) >= 2, overlapping
        # Even an oracle intensity window (the organ's own 5-95 % HU range) segments poorly,
        # because other organs, muscle, bowel and vessels share the range.
        for name, worst in (("liver", 0.85), ("spleen", 0.6), ("kidney", 0.6), ("pancreas", 0.6), ("aorta", 0.6)):
            organ = p.labels == LABEL_IDS[name]
            low, high = np.percentile(p.image[organ], [5, 95])
            window = (p.image >= low) & (p.image <= high)
            dice = 2 * (window & organ).sum() / (window.sum() + organ.sum())
            assert dice < worst, (name, dice)


def test_labels_lie_inside_the_body(phantoms: list[Phantom]) -> None:
    for p in phantoms:
        body = np.stack([ndimage.binary_erosion(ndimage.binary_fill_holes(s), iterations=2) for s in p.image > -500])
        # (eroded by two pixels: labels lie strictly inside, not on the skin)
        assert not (p.labels > 0)[~body].any()


@pytest.mark.parametrize(
    "kwargs",
    [{"seed": -1}, {"seed": 1.5}, {"seed": True}, {"seed": 0, "shape": (4, 64, 64)}, {"seed": 0, "shape": (32, 64)}],
)
def test_bad_arguments_raise_input_error(kwargs: dict) -> None:
    with pytest.raises(InputError):
        generate_phantom(**kwargs)


# ---------------------------------------------------------------------------------------------
# The nnU-Net dataset
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms") / "ds"
    return write_phantom_dataset(root, num_train=2, num_test=1, seed=7, shape=SMALL)


def _case_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.nii.gz"))


def test_dataset_layout_and_json(dataset: Path) -> None:
    names = {p.relative_to(dataset).as_posix() for p in _case_files(dataset)}
    assert names == {
        "imagesTr/phantom_000_0000.nii.gz",
        "imagesTr/phantom_001_0000.nii.gz",
        "labelsTr/phantom_000.nii.gz",
        "labelsTr/phantom_001.nii.gz",
        "imagesTs/phantom_test_000_0000.nii.gz",
        "labelsTs/phantom_test_000.nii.gz",
    }
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {name: i for i, name in enumerate(CLASS_NAMES)}
    assert meta["labels"]["background"] == 0 and meta["labels"]["liver"] == 1
    assert meta["numTraining"] == 2
    assert meta["file_ending"] == ".nii.gz"
    assert "synthetic" in meta["description"].lower()
    assert not list(dataset.rglob("*.tmp*"))  # no leftovers of the atomic writes


def test_nifti_round_trip_geometry_and_orientation(dataset: Path) -> None:
    expected = generate_phantom(case_seed(7, "train", 1), SMALL)
    image = nib.load(dataset / "imagesTr" / "phantom_001_0000.nii.gz")
    label = nib.load(dataset / "labelsTr" / "phantom_001.nii.gz")
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    assert image.shape == SMALL[::-1]  # (x, y, z) on disk
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    sz, sy, sx = expected.spacing
    np.testing.assert_allclose(np.diag(image.affine)[:3], [sx, sy, sz], rtol=1e-6)
    np.testing.assert_allclose(image.header.get_zooms(), [sx, sy, sz], rtol=1e-6)
    np.testing.assert_allclose(label.affine, image.affine)
    data = np.asanyarray(image.dataobj)
    seg = np.asanyarray(label.dataobj)
    assert data.dtype == np.int16 and seg.dtype == np.uint8
    np.testing.assert_array_equal(data, expected.image.transpose(2, 1, 0))
    np.testing.assert_array_equal(seg, expected.labels.transpose(2, 1, 0))
    # In world (RAS) coordinates the liver is on the patient's right of the spleen, superior
    # to the kidneys, and anterior to the spine.
    def world_centre(label_id: int) -> np.ndarray:
        ijk = np.argwhere(seg == label_id).mean(axis=0)
        return nib.affines.apply_affine(label.affine, ijk)

    liver, spleen, kidney = (world_centre(LABEL_IDS[n]) for n in ("liver", "spleen", "kidney"))
    assert liver[0] > spleen[0] + 30  # x: right is positive
    assert liver[2] > kidney[2]  # z: superior is positive
    spine = nib.affines.apply_affine(image.affine, np.argwhere(data > 400).mean(axis=0))
    assert spine[1] < liver[1]  # y: anterior is positive


def test_files_read_back_through_volume_io_as_the_generated_arrays(dataset: Path) -> None:
    from s2vnet.data.volume_io import read_label_volume, read_volume

    expected = generate_phantom(case_seed(7, "test", 0), SMALL)
    image_path = dataset / "imagesTs" / "phantom_test_000_0000.nii.gz"
    image = read_volume(image_path, dtype=None)
    labels = read_label_volume(dataset / "labelsTs" / "phantom_test_000.nii.gz", image, num_classes=len(CLASS_NAMES))
    # Already canonical on disk: reading gives the generated (z, y, x) arrays, dtypes kept.
    assert image.array.dtype == np.int16 and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(image.array, expected.image)
    np.testing.assert_array_equal(labels.array, expected.labels)
    np.testing.assert_allclose(image.spacing, expected.spacing, rtol=1e-6)
    np.testing.assert_allclose(image.geometry.affine, expected.affine(), rtol=1e-6)
    header = nib.load(image_path).header
    assert header.get_xyzt_units()[0] == "mm"
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1


def test_second_run_skips_existing_cases(dataset: Path) -> None:
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _case_files(dataset)}
    json_before = (dataset / "dataset.json").stat().st_ino
    seen: list[tuple[str, str, bool]] = []
    write_phantom_dataset(dataset, num_train=2, num_test=1, seed=7, shape=SMALL, progress=lambda *a: seen.append(a))
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _case_files(dataset)}
    assert after == before
    assert (dataset / "dataset.json").stat().st_ino == json_before
    expected = [("test", "phantom_test_000", False), ("train", "phantom_000", False), ("train", "phantom_001", False)]
    assert sorted(seen) == expected


def test_resume_completes_missing_cases_and_overwrite_rewrites(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "ds", num_train=1, seed=3, shape=SMALL)
    first = (root / "imagesTr" / "phantom_000_0000.nii.gz").stat().st_ino
    write_phantom_dataset(root, num_train=2, seed=3, shape=SMALL)  # grows: only case 1 is new
    assert (root / "imagesTr" / "phantom_000_0000.nii.gz").stat().st_ino == first
    assert (root / "labelsTr" / "phantom_001.nii.gz").exists()
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 2
    write_phantom_dataset(root, num_train=2, seed=3, shape=SMALL, overwrite=True)
    assert (root / "imagesTr" / "phantom_000_0000.nii.gz").stat().st_ino != first


def test_resuming_with_other_settings_is_refused(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="seed"):
        write_phantom_dataset(dataset, num_train=2, seed=8, shape=SMALL)
    with pytest.raises(InputError, match="shape"):
        write_phantom_dataset(dataset, num_train=2, seed=7, shape=(32, 64, 72))
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    for overwrite in (False, True):
        with pytest.raises(InputError, match="not a phantom dataset"):
            write_phantom_dataset(other, num_train=1, shape=SMALL, overwrite=overwrite)
    assert sorted(p.name for p in other.iterdir()) == ["dataset.json"]  # nothing was written
    with pytest.raises(InputError, match="num_train"):
        write_phantom_dataset(tmp_path / "x", num_train=0, shape=SMALL)


def test_train_and_test_cases_differ(dataset: Path) -> None:
    assert case_seed(7, "train", 0) != case_seed(7, "test", 0)
    train = np.asanyarray(nib.load(dataset / "labelsTr" / "phantom_000.nii.gz").dataobj)
    test = np.asanyarray(nib.load(dataset / "labelsTs" / "phantom_test_000.nii.gz").dataobj)
    assert not np.array_equal(train, test)
    images = [np.asanyarray(nib.load(p).dataobj) for p in sorted(dataset.glob("images*/*.nii.gz"))]
    assert len(images) == 3
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1 :])


def test_cli_with_workers_matches_the_library(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, "tools/make_phantoms.py", "--output", str(out), "--num-train", "2", "--num-test", "1"]
    cmd += ["--seed", "7", "--shape", *map(str, SMALL), "--workers", "2"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "3 written, 0 already present" in result.stderr
    for path in _case_files(dataset):
        ours = out / path.relative_to(dataset)
        np.testing.assert_array_equal(np.asanyarray(nib.load(ours).dataobj), np.asanyarray(nib.load(path).dataobj))
    bad = subprocess.run(cmd[:-2] + ["--seed", "8"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "seed" in bad.stderr
