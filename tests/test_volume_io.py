"""Tests for s2vnet.data.volume_io: canonical orientation, geometry round trips, bad input, atomic writes.

Expected canonical positions are computed independently of nibabel's orientation helpers: the
canonical index of a voxel along S (or A, R) is the rank of its world S (A, R) coordinate among
all voxel centres of the grid.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from s2vnet.data.volume_io import (
    VolumeGeometry,
    read_label_volume,
    read_volume,
    to_original_orientation,
    write_label_volume,
    write_probability_volume,
)
from s2vnet.utils.errors import InputError

LPS_RAS = np.diag([-1.0, -1.0, 1.0])
SHAPE = (7, 8, 9)  # distinct sizes, so any axis mix-up changes the shape


def _rot_s(degrees: float) -> np.ndarray:
    """Rotation about the superior axis (keeps axial planes axial)."""
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _affine(columns: np.ndarray, origin=(-10.0, 20.0, -30.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = columns
    affine[:3, 3] = origin
    return affine


# Voxel axis -> world (RAS) direction, spacing 2 (R), 3 (A), 4 (S) mm wherever the axis goes.
ORIENTATIONS = {
    "RAS": np.diag([2.0, 3.0, 4.0]),
    "LPS": np.diag([-2.0, -3.0, 4.0]),
    "RPS-flipped": np.diag([2.0, -3.0, 4.0]),
    # i -> S, j -> R, k -> A: the slice axis stored first.
    "permuted-SRA": np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [4.0, 0.0, 0.0]]),
    # i -> P, j -> I, k -> L: permuted and every axis flipped.
    "permuted-flipped-PIL": np.array([[0.0, 0.0, -2.0], [-3.0, 0.0, 0.0], [0.0, -4.0, 0.0]]),
    # Oblique: in-plane axes rotated 25 degrees about S, and axes permuted.
    "oblique-permuted": np.column_stack(
        [[0.0, 0.0, 4.0], _rot_s(25.0) @ [2.0, 0.0, 0.0], _rot_s(25.0) @ [0.0, 3.0, 0.0]]
    ),
}
AXIS_ALIGNED = {"RAS", "LPS", "RPS-flipped", "permuted-SRA", "permuted-flipped-PIL"}
MARKERS = [(0, 0, 0), (6, 7, 8), (1, 2, 3), (5, 1, 7), (3, 6, 0)]


def _voxel_world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates of every voxel centre, (N, 3)."""
    ijk = np.indices(shape).reshape(3, -1).T
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _rank(value: float, all_values: np.ndarray) -> int:
    """Index of ``value`` among the distinct values of a grid coordinate (sorted ascending)."""
    distinct = np.unique(np.round(all_values, 4))
    return int(np.flatnonzero(np.isclose(distinct, round(value, 4)))[0])


def _marked_volume(rng: np.random.Generator, shape=SHAPE) -> np.ndarray:
    data = rng.integers(0, 50, size=shape).astype(np.int16)
    for n, ijk in enumerate(MARKERS):
        data[ijk] = 1000 + n
    return data


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _find(array: np.ndarray, value: float) -> tuple[int, ...]:
    hits = np.argwhere(array == value)
    assert len(hits) == 1, f"value {value} found {len(hits)} times"
    return tuple(int(v) for v in hits[0])


# ---------------------------------------------------------------------------------------------
# Real CT
# ---------------------------------------------------------------------------------------------


def test_real_ct_geometry_round_trip(real_ct_path: Path, real_seg_path: Path, tmp_path: Path) -> None:
    ct = read_volume(real_ct_path)
    assert ct.array.shape == (30, 101, 122) and ct.array.dtype == np.float32
    assert ct.spacing == pytest.approx((3.0, 3.0, 3.0))
    seg = read_label_volume(real_seg_path, reference=ct, num_classes=118)
    assert seg.array.dtype == np.uint8

    out = tmp_path / "pred.nii.gz"
    write_label_volume(seg.array, ct.geometry, out)
    written, original_ct, original_seg = nib.load(out), nib.load(real_ct_path), nib.load(real_seg_path)
    assert written.shape == original_ct.shape
    np.testing.assert_array_equal(written.affine, original_ct.affine)
    assert written.header.get_sform(coded=True)[1] == original_ct.header.get_sform(coded=True)[1]
    assert written.header.get_qform(coded=True)[1] == original_ct.header.get_qform(coded=True)[1]
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(original_seg.dataobj))
    # The image itself goes back voxel for voxel too (int16 HU are exact in float32).
    np.testing.assert_array_equal(to_original_orientation(ct.array, ct.geometry), np.asarray(original_ct.dataobj))


def test_real_ct_written_as_mha_keeps_world_geometry(real_ct_path: Path, real_seg_path: Path, tmp_path: Path) -> None:
    ct = read_volume(real_ct_path)
    seg = read_label_volume(real_seg_path, reference=ct)
    write_label_volume(seg.array, ct.geometry, tmp_path / "pred.mha")
    written, reference = sitk.ReadImage(str(tmp_path / "pred.mha")), sitk.ReadImage(str(real_seg_path))
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(reference))


# ---------------------------------------------------------------------------------------------
# Synthetic orientations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_canonical_orientation_and_exact_round_trip(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    affine = _affine(ORIENTATIONS[name])
    data = _marked_volume(rng)
    image_path = _save_nifti(tmp_path / "image.nii.gz", data, affine)
    volume = read_volume(image_path)
    world = _voxel_world(affine, SHAPE)

    # Spacing (z, y, x) is the size of the voxel axis that went to S, A, R.
    assert volume.spacing == pytest.approx((4.0, 3.0, 2.0))
    for n, ijk in enumerate(MARKERS):
        z, y, x = _find(volume.array, 1000 + n)
        r, a, s = affine[:3, :3] @ ijk + affine[:3, 3]
        # array[z] is an axial slice: z is the rank of the marker's superior coordinate.
        assert z == _rank(s, world[:, 2]), (name, ijk)
        if name in AXIS_ALIGNED:
            assert (y, x) == (_rank(a, world[:, 1]), _rank(r, world[:, 0])), (name, ijk)
        np.testing.assert_allclose(volume.geometry.canonical_affine @ [x, y, z, 1], [r, a, s, 1], atol=1e-4)
    assert nib.aff2axcodes(volume.geometry.canonical_affine) == ("R", "A", "S")

    # Labels on the same grid: write back, read with plain nibabel, compare with the file's own.
    labels = (data % 5).astype(np.uint8)
    _save_nifti(tmp_path / "labels.nii.gz", labels, affine)
    label_volume = read_label_volume(tmp_path / "labels.nii.gz", reference=volume, num_classes=5)
    write_label_volume(label_volume.array, volume.geometry, tmp_path / "out.nii.gz")
    written = nib.load(tmp_path / "out.nii.gz")
    assert written.shape == SHAPE
    np.testing.assert_array_equal(written.affine, nib.load(image_path).affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_labels_stored_in_another_axis_order_on_the_same_grid_are_accepted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    affine = _affine(ORIENTATIONS["RAS"])
    data = _marked_volume(rng)
    image = read_volume(_save_nifti(tmp_path / "image.nii.gz", data, affine))
    # The same voxels stored LPS: flip i and j and move the origin to the opposite corner.
    flipped_affine = affine.copy()
    flipped_affine[:3, :2] *= -1
    flipped_affine[:3, 3] = affine[:3, :3] @ [SHAPE[0] - 1, SHAPE[1] - 1, 0] + affine[:3, 3]
    labels = (data >= 1000).astype(np.uint8)
    _save_nifti(tmp_path / "labels.nii.gz", labels[::-1, ::-1, :].copy(), flipped_affine)
    label_volume = read_label_volume(tmp_path / "labels.nii.gz", reference=image)
    np.testing.assert_array_equal(label_volume.array, (image.array >= 1000).astype(np.uint8))


def test_probability_volume_on_original_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    affine = _affine(ORIENTATIONS["permuted-flipped-PIL"])
    volume = read_volume(_save_nifti(tmp_path / "image.nii.gz", _marked_volume(rng), affine))
    probs = rng.random((3,) + volume.array.shape).astype(np.float32)
    write_probability_volume(probs, volume.geometry, tmp_path / "probs.nii.gz")
    written = nib.load(tmp_path / "probs.nii.gz")
    assert written.shape == SHAPE + (3,)
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(written.affine, affine)
    data = np.asarray(written.dataobj)
    for c in range(3):
        np.testing.assert_array_equal(data[..., c], to_original_orientation(probs[c], volume.geometry))
    # The marker's canonical position holds the marker's probability on the original grid too.
    z, y, x = _find(volume.array, 1000)
    assert data[MARKERS[0] + (1,)] == probs[1, z, y, x]


def test_geometry_survives_serialisation(tmp_path: Path) -> None:
    affine = _affine(ORIENTATIONS["oblique-permuted"])
    volume = read_volume(_save_nifti(tmp_path / "image.nii.gz", _marked_volume(np.random.default_rng(3)), affine))
    geometry = VolumeGeometry.from_dict(volume.geometry.to_dict())
    write_label_volume(np.ones(volume.array.shape, np.uint8), geometry, tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(nib.load(tmp_path / "out.nii.gz").affine, nib.load(tmp_path / "image.nii.gz").affine)


def test_large_labels_are_written_as_uint16(tmp_path: Path) -> None:
    volume = read_volume(_save_nifti(tmp_path / "image.nii.gz", np.zeros(SHAPE, np.int16), np.eye(4)))
    labels = np.zeros(volume.array.shape, np.int32)
    labels[0, 0, 0] = 300
    write_label_volume(labels, volume.geometry, tmp_path / "out.nii.gz")
    written = nib.load(tmp_path / "out.nii.gz")
    assert written.get_data_dtype() == np.uint16
    assert np.asarray(written.dataobj).max() == 300
    with pytest.raises(InputError, match="unsupported output format"):
        write_label_volume(labels, volume.geometry, tmp_path / "out.png")
    with pytest.raises(ValueError, match="integers"):
        write_label_volume(labels.astype(np.float32), volume.geometry, tmp_path / "out.nii.gz")


def test_singleton_fourth_axis_is_squeezed(tmp_path: Path) -> None:
    data = _marked_volume(np.random.default_rng(4))
    volume = read_volume(_save_nifti(tmp_path / "image.nii.gz", data[..., None], np.diag([2.0, 3.0, 4.0, 1.0])))
    assert volume.array.shape == SHAPE[::-1]
    assert _find(volume.array, 1001) == MARKERS[1][::-1]


# ---------------------------------------------------------------------------------------------
# SimpleITK formats: MHA and DICOM
# ---------------------------------------------------------------------------------------------


def _itk_image(data_ijk: np.ndarray, spacing, origin, direction: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(data_ijk.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.ravel().tolist())
    return image


def test_mha_round_trip_keeps_world_geometry(tmp_path: Path) -> None:
    # Oblique and permuted in LPS: i -> mostly posterior, j -> inferior, k -> mostly left.
    direction = _rot_s(20.0) @ np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    data = _marked_volume(np.random.default_rng(5))
    image = _itk_image(data, (0.7, 0.9, 2.5), (12.0, -30.0, 45.0), direction)
    sitk.WriteImage(image, str(tmp_path / "image.mha"))

    volume = read_volume(tmp_path / "image.mha")
    assert volume.geometry.source_format == "itk"
    assert volume.spacing == pytest.approx((0.9, 0.7, 2.5))  # j -> S, i -> A-ish, k -> R-ish
    marker = MARKERS[3]
    world_lps = np.array(image.TransformIndexToPhysicalPoint(marker))
    world_ras = LPS_RAS @ world_lps
    z, y, x = _find(volume.array, 1003)
    np.testing.assert_allclose(volume.geometry.canonical_affine @ [x, y, z, 1], [*world_ras, 1], atol=1e-6)
    all_points = [tuple(int(v) for v in p) for p in np.indices(SHAPE).reshape(3, -1).T]
    all_s = np.array([image.TransformIndexToPhysicalPoint(p)[2] for p in all_points])  # S = LPS z
    assert z == _rank(world_ras[2], all_s)

    labels = np.where(volume.array == 1003, 3, 0).astype(np.uint8)
    write_label_volume(labels, volume.geometry, tmp_path / "labels.mha")
    write_label_volume(labels, volume.geometry, tmp_path / "labels.nii.gz")

    as_mha = sitk.ReadImage(str(tmp_path / "labels.mha"))
    assert as_mha.GetSize() == image.GetSize()
    assert as_mha.GetOrigin() == image.GetOrigin() and as_mha.GetSpacing() == image.GetSpacing()
    np.testing.assert_allclose(as_mha.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(np.argwhere(sitk.GetArrayFromImage(as_mha) == 3), [marker[::-1]])

    as_nifti = nib.load(tmp_path / "labels.nii.gz")
    assert as_nifti.shape == SHAPE
    np.testing.assert_array_equal(np.argwhere(np.asarray(as_nifti.dataobj) == 3), [marker])
    np.testing.assert_allclose(as_nifti.affine @ [*marker, 1], [*world_ras, 1], atol=1e-3)
    # SimpleITK reading our NIfTI must place the marker where it was (checks the RAS/LPS flip).
    itk_view = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    np.testing.assert_allclose(itk_view.TransformIndexToPhysicalPoint(marker), world_lps, atol=1e-3)


def test_nifti_labels_written_as_mha_keep_world_geometry(tmp_path: Path) -> None:
    affine = _affine(ORIENTATIONS["permuted-flipped-PIL"])
    data = _marked_volume(np.random.default_rng(6))
    volume = read_volume(_save_nifti(tmp_path / "image.nii.gz", data, affine))
    labels = np.where(volume.array == 1002, 7, 0).astype(np.uint8)
    write_label_volume(labels, volume.geometry, tmp_path / "labels.nrrd")
    written = sitk.ReadImage(str(tmp_path / "labels.nrrd"))
    assert written.GetSize() == SHAPE
    marker = MARKERS[2]
    np.testing.assert_array_equal(np.argwhere(sitk.GetArrayFromImage(written) == 7), [marker[::-1]])
    expected_lps = LPS_RAS @ (affine[:3, :3] @ marker + affine[:3, 3])
    np.testing.assert_allclose(written.TransformIndexToPhysicalPoint(marker), expected_lps, atol=1e-6)


def _write_dicom_series(
    folder: Path, data_ijk: np.ndarray, spacing, series_uid: str, first_slice_name: int = 0
) -> None:
    """Write a 3D int16 array as one DICOM file per slice (SimpleITK's documented recipe)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = _itk_image(data_ijk.astype(np.int16), spacing, (-40.0, -60.0, 100.0), np.eye(3))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # otherwise every slice gets its own series UID
    tags = {
        "0008|0060": "CT",
        "0008|0008": "DERIVED\\SECONDARY",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        "0020|000e": series_uid,
        "0020|0037": "1\\0\\0\\0\\1\\0",
        "0018|0050": str(spacing[2]),
        "0008|0021": time.strftime("%Y%m%d"),
    }
    for k in range(data_ijk.shape[2]):
        slice_image = image[:, :, k]
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        slice_image.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"slice_{first_slice_name + k:03d}.dcm"))
        writer.Execute(slice_image)


@pytest.fixture
def dicom_writer() -> Callable[..., None]:
    def write(*args, **kwargs) -> None:
        try:
            _write_dicom_series(*args, **kwargs)
        except RuntimeError as exc:  # SimpleITK built without GDCM writing
            pytest.skip(f"SimpleITK cannot write DICOM here: {exc}")

    return write


def test_dicom_series_folder(tmp_path: Path, dicom_writer, caplog) -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(-100, 100, size=(10, 12, 4)).astype(np.int16)
    data[3, 4, 2] = 999
    folder = tmp_path / "dicom"
    dicom_writer(folder, data, (0.8, 0.9, 2.5), "1.2.826.0.1.3680043.2.1125.1.1")
    volume = read_volume(folder)
    assert volume.geometry.source_format == "dicom"
    assert volume.array.shape == (4, 12, 10)
    assert volume.spacing == pytest.approx((2.5, 0.9, 0.8))
    # DICOM's identity direction is LPS: i runs to the left and j to the back, so both flip.
    assert _find(volume.array, 999) == (2, 12 - 1 - 4, 10 - 1 - 3)

    # A second, smaller series in the same folder: the larger one is read, with a warning.
    dicom_writer(folder, data[:, :, :2], (0.8, 0.9, 2.5), "1.2.826.0.1.3680043.2.1125.1.2", first_slice_name=100)
    with caplog.at_level(logging.WARNING, logger="s2vnet.data.volume_io"):
        again = read_volume(folder)
    assert again.array.shape == (4, 12, 10)
    assert "1.2.826.0.1.3680043.2.1125.1.2" in caplog.text


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path: Path, dicom_writer) -> None:
    folder = tmp_path / "gap"
    dicom_writer(folder, np.zeros((6, 5, 5), np.int16), (1.0, 1.0, 2.0), "1.2.826.0.1.3680043.2.1125.1.3")
    (folder / "slice_002.dcm").unlink()
    with pytest.raises(InputError, match="uneven slice positions") as info:
        read_volume(folder)
    assert str(folder) in str(info.value)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _truncated(tmp_path: Path, source: Path, name: str) -> Path:
    payload = source.read_bytes()
    target = tmp_path / name
    target.write_bytes(payload[: len(payload) // 2])
    return target


def _bad_image(kind: str, tmp_path: Path, real_ct_path: Path) -> tuple[Path, str]:
    """Make a bad input file; return it and a phrase the error message must contain."""
    rng = np.random.default_rng(8)
    if kind == "missing":
        return tmp_path / "nowhere.nii.gz", "no such file"
    if kind == "truncated-nii.gz":
        return _truncated(tmp_path, real_ct_path, "cut.nii.gz"), "corrupt or truncated"
    if kind == "truncated-nii":
        full = _save_nifti(tmp_path / "full.nii", rng.random(SHAPE).astype(np.float32), np.eye(4))
        return _truncated(tmp_path, full, "cut.nii"), "corrupt or truncated"
    if kind == "garbage":
        path = tmp_path / "garbage.nii.gz"
        path.write_bytes(rng.integers(0, 256, 5000).astype(np.uint8).tobytes())
        return path, "cannot read"
    if kind == "truncated-mha":
        full = tmp_path / "full.mha"
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((9, 8, 7)).astype(np.float32)), str(full))
        return _truncated(tmp_path, full, "cut.mha"), "cannot read"
    if kind == "2d":
        return _save_nifti(tmp_path / "flat.nii.gz", np.zeros((8, 9), np.int16), np.eye(4)), "2D"
    if kind == "4d":
        return _save_nifti(tmp_path / "series.nii.gz", np.zeros(SHAPE + (2,), np.int16), np.eye(4)), "2 volumes"
    if kind == "2d-mha":
        path = tmp_path / "flat.mha"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.int16)), str(path))
        return path, "2D"
    if kind in ("nan", "inf"):
        data = rng.random(SHAPE).astype(np.float32)
        data[0, 0, :3] = np.nan if kind == "nan" else np.inf
        return _save_nifti(tmp_path / f"{kind}.nii.gz", data, np.eye(4)), f"3 of {data.size} voxels are not finite"
    if kind == "zero-size":
        return _save_nifti(tmp_path / "empty.nii.gz", np.zeros((0, 8, 9), np.int16), np.eye(4)), "zero-size"
    if kind == "degenerate-affine":
        image = nib.Nifti1Image(np.zeros(SHAPE, np.int16), np.eye(4))
        image.set_sform(np.diag([2.0, 0.0, 4.0, 1.0]), code=2)  # the A axis has zero length
        path = tmp_path / "flat_affine.nii.gz"
        nib.save(image, str(path))
        return path, "degenerate"
    if kind == "empty-folder":
        path = tmp_path / "no_dicom"
        path.mkdir()
        (path / "notes.txt").write_text("not a DICOM file")
        return path, "no DICOM series"
    raise AssertionError(kind)


BAD_IMAGES = [
    "missing", "truncated-nii.gz", "truncated-nii", "garbage", "truncated-mha", "2d", "4d", "2d-mha",
    "nan", "inf", "zero-size", "degenerate-affine", "empty-folder",
]


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_bad_image_raises_input_error_naming_the_file(kind: str, tmp_path: Path, real_ct_path: Path) -> None:
    path, phrase = _bad_image(kind, tmp_path, real_ct_path)
    with pytest.raises(InputError) as info:
        read_volume(path)
    message = str(info.value)
    assert str(path) in message
    assert phrase in message
    # The same checks guard label files.
    with pytest.raises(InputError, match=str(path.name)):
        read_label_volume(path)


def _label_case(kind: str, tmp_path: Path) -> tuple[Path, dict, str]:
    affine = _affine(ORIENTATIONS["LPS"])
    if kind == "shape":
        path = _save_nifti(tmp_path / "labels.nii.gz", np.zeros((7, 8, 10), np.uint8), affine)
        return path, {}, "shape (7, 8, 10) vs (7, 8, 9)"
    if kind == "affine":
        shifted = affine.copy()
        shifted[0, 3] += 1.5
        return _save_nifti(tmp_path / "labels.nii.gz", np.zeros(SHAPE, np.uint8), shifted), {}, "differ by up to 1.5 mm"
    if kind == "outside-classes":
        data = np.zeros(SHAPE, np.uint8)
        data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = 3, 9, 12
        return _save_nifti(tmp_path / "labels.nii.gz", data, affine), {"num_classes": 5}, "9, 12"
    if kind == "negative":
        data = np.zeros(SHAPE, np.int16)
        data[0, 0, 0] = -2
        return _save_nifti(tmp_path / "labels.nii.gz", data, affine), {"num_classes": 5}, "-2"
    if kind == "fractional":
        data = np.zeros(SHAPE, np.float32)
        data[0, 0, 0] = 1.5
        return _save_nifti(tmp_path / "labels.nii.gz", data, affine), {}, "non-integer"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["shape", "affine", "outside-classes", "negative", "fractional"])
def test_bad_labels_raise_input_error(kind: str, tmp_path: Path) -> None:
    image_path = _save_nifti(tmp_path / "image.nii.gz", np.zeros(SHAPE, np.int16), _affine(ORIENTATIONS["LPS"]))
    image = read_volume(image_path)
    path, kwargs, phrase = _label_case(kind, tmp_path)
    with pytest.raises(InputError) as info:
        read_label_volume(path, reference=image, **kwargs)
    message = str(info.value)
    assert str(path) in message and phrase in message
    if kind in ("shape", "affine"):
        assert str(image_path) in message


def test_labels_within_tolerance_are_accepted(tmp_path: Path) -> None:
    affine = _affine(ORIENTATIONS["LPS"])
    image = read_volume(_save_nifti(tmp_path / "image.nii.gz", np.zeros(SHAPE, np.int16), affine))
    nudged = affine.copy()
    nudged[:3, 3] += 2e-4  # float32-rounding-sized disagreement
    label_path = _save_nifti(tmp_path / "labels.nii.gz", np.ones(SHAPE, np.float32), nudged)
    labels = read_label_volume(label_path, reference=image)
    assert labels.array.dtype == np.uint8 and labels.array.min() == 1


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def _fail_midway(path_arg_index: int) -> Callable[..., None]:
    def failing(*args, **kwargs) -> None:
        Path(args[path_arg_index]).write_bytes(b"half a file")
        raise RuntimeError("disk full")

    return failing


@pytest.mark.parametrize("target", ["out.nii.gz", "out.mha", "probs.nii.gz"])
def test_failed_write_leaves_nothing_under_the_final_name(target: str, tmp_path: Path, monkeypatch) -> None:
    volume = read_volume(_save_nifti(tmp_path / "image.nii.gz", np.zeros(SHAPE, np.int16), np.eye(4)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr(nib, "save", _fail_midway(1))
    monkeypatch.setattr(sitk, "WriteImage", _fail_midway(1))
    with pytest.raises(RuntimeError, match="disk full"):
        if target.startswith("probs"):
            probs = np.zeros((2,) + volume.array.shape, np.float32)
            write_probability_volume(probs, volume.geometry, out_dir / target)
        else:
            write_label_volume(np.zeros(volume.array.shape, np.uint8), volume.geometry, out_dir / target)
    assert os.listdir(out_dir) == []  # neither the final name nor a leftover temporary file


def test_failed_overwrite_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    volume = read_volume(_save_nifti(tmp_path / "image.nii.gz", np.zeros(SHAPE, np.int16), np.eye(4)))
    final = tmp_path / "out.nii.gz"
    write_label_volume(np.ones(volume.array.shape, np.uint8), volume.geometry, final)
    before = final.read_bytes()
    monkeypatch.setattr(nib, "save", _fail_midway(1))
    with pytest.raises(RuntimeError):
        write_label_volume(np.zeros(volume.array.shape, np.uint8), volume.geometry, final)
    assert final.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Suspicious inputs: read, but with a warning saying what was assumed
# ---------------------------------------------------------------------------------------------


def test_nifti_without_qform_or_sform_warns(tmp_path: Path, caplog) -> None:
    bare = tmp_path / "bare.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), None), str(bare))  # both codes 0
    with caplog.at_level(logging.WARNING, logger="s2vnet.data.volume_io"):
        read_volume(bare)
    assert "bare.nii.gz" in caplog.text and "neither a qform nor an sform" in caplog.text
    assert "LAS" in caplog.text  # what was assumed: nibabel's fallback orientation
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2vnet.data.volume_io"):
        read_volume(_save_nifti(tmp_path / "oriented.nii.gz", np.zeros(SHAPE, np.int16), np.eye(4)))
    assert caplog.text == ""


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_sheared_affine_warns(suffix: str, tmp_path: Path, caplog) -> None:
    sheared = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 1.5, 4.0]])  # j axis tilted towards S
    path = tmp_path / f"sheared{suffix}"
    if suffix == ".mha":
        image = sitk.GetImageFromArray(np.zeros(SHAPE[::-1], np.int16))
        linear = LPS_RAS @ sheared
        image.SetSpacing(np.linalg.norm(linear, axis=0).tolist())
        image.SetDirection((linear / np.linalg.norm(linear, axis=0)).ravel().tolist())
        sitk.WriteImage(image, str(path))
    else:
        _save_nifti(path, np.zeros(SHAPE, np.int16), _affine(sheared))
    with caplog.at_level(logging.WARNING, logger="s2vnet.data.volume_io"):
        read_volume(path)
    assert f"sheared{suffix}" in caplog.text and "sheared" in caplog.text and "j-k" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2vnet.data.volume_io"):  # oblique is not sheared
        read_volume(_save_nifti(tmp_path / "oblique.nii.gz", np.zeros(SHAPE, np.int16), _affine(ORIENTATIONS["oblique-permuted"])))
    assert caplog.text == ""


def test_unsigned_ct_stored_as_hu_plus_1024_warns(tmp_path: Path, caplog) -> None:
    from s2vnet.data.volume_io import warn_if_not_hounsfield

    rng = np.random.default_rng(0)
    hu = np.where(rng.random(SHAPE) < 0.4, -1000, rng.integers(-100, 300, SHAPE)).astype(np.int16)  # air + tissue
    offset = read_volume(_save_nifti(tmp_path / "offset.nii.gz", (hu + 1024).astype(np.uint16), np.eye(4)))
    with caplog.at_level(logging.WARNING, logger="s2vnet.data.volume_io"):
        assert warn_if_not_hounsfield(offset)
    assert "offset.nii.gz" in caplog.text and "Hounsfield" in caplog.text and "1024" in caplog.text
    caplog.clear()
    proper = read_volume(_save_nifti(tmp_path / "hu.nii.gz", hu, np.eye(4)))
    with caplog.at_level(logging.WARNING, logger="s2vnet.data.volume_io"):
        assert not warn_if_not_hounsfield(proper)
    assert caplog.text == ""


# ---------------------------------------------------------------------------------------------
# Temporaries left by a killed write
# ---------------------------------------------------------------------------------------------


def _killed_while_writing(final: Path) -> None:
    """Start a process that dies by SIGKILL in the middle of an atomic write of ``final``."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from s2vnet.utils.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1], suffix='.nii.gz') as tmp:\n"
        "    tmp.write_bytes(b'half a volume')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(final)], timeout=120)
    assert result.returncode == -9


def test_rewrite_removes_temporaries_of_killed_writes_only(tmp_path: Path) -> None:
    import subprocess

    volume = read_volume(_save_nifti(tmp_path / "image.nii.gz", np.zeros(SHAPE, np.int16), np.eye(4)))
    out = tmp_path / "out"
    out.mkdir()
    final = out / "case.nii.gz"
    _killed_while_writing(final)
    killed = [p.name for p in out.iterdir()]
    assert len(killed) == 1 and killed[0].startswith(".case.nii.gz.") and not final.exists()
    # Temporaries that must survive: a live writer's, another host's, a fresh one of the old
    # naming, and another output's.
    host = killed[0][len(".case.nii.gz.") :].split(".")[0].rsplit("-", 1)[0]  # ".case.nii.gz.<host>-<pid>.<random>..."
    other_host = "elsewhere" if host != "elsewhere" else "nowhere"
    with subprocess.Popen(["sleep", "60"]) as live:
        try:
            keep = [
                f".case.nii.gz.{host}-{live.pid}.abcdefgh.tmp.nii.gz",
                f".case.nii.gz.{other_host}-12345.abcdefgh.tmp.nii.gz",
                ".case.nii.gz.abcdefgh.tmp.nii.gz",
                f".other.nii.gz.{host}-999999999.abcdefgh.tmp.nii.gz",
            ]
            old = out / ".case.nii.gz.zyxwvuts.tmp.nii.gz"  # old naming, untouched for two hours
            for name in keep + [old.name]:
                (out / name).write_bytes(b"partial")
            os.utime(old, (time.time() - 7200, time.time() - 7200))
            write_label_volume(np.zeros(volume.array.shape, np.uint8), volume.geometry, final)
        finally:
            live.kill()
    assert sorted(p.name for p in out.iterdir()) == sorted(keep + ["case.nii.gz"])
