"""The prepare step: cache contents, resuming after a crash, bad volumes reported without stopping."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import phantom_config
from s2vnet.data.intensity import normalize_intensity
from s2vnet.data.prepare import PreparedVolume, PrepareJob, case_cache_dir, is_prepared, prepare_case, prepare_jobs
from s2vnet.data.volume_io import read_label_volume, read_volume
from s2vnet.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _job(root: Path, cache: Path, case: str, num_classes: int = 8) -> PrepareJob:
    image = root / "imagesTr" / f"{case}_0000.nii.gz"
    return PrepareJob(case, str(image), str(root / "labelsTr" / f"{case}.nii.gz"), "CT", num_classes, str(case_cache_dir(cache, root, image)))


def test_cache_holds_canonical_uint8_arrays_and_metadata(phantom_root, tmp_path):
    job = _job(phantom_root, tmp_path, "phantom_000")
    case_dir = prepare_case(job.image_file, job.label_file, "CT", 8, job.case_dir, job.case_id)
    volume = PreparedVolume(case_dir)
    image = read_volume(job.image_file)
    labels = read_label_volume(job.label_file)
    assert volume.image.dtype == np.uint8 and volume.label.dtype == np.uint8
    assert np.array_equal(volume.image, normalize_intensity(image.array, "CT"))
    assert np.array_equal(volume.label, labels.array)
    assert volume.spacing == pytest.approx(image.spacing)
    # Per-slice class presence, and the geometry needed to write predictions back.
    for z in (0, len(volume.slice_classes) // 2):
        assert volume.slice_classes[z] == sorted(np.unique(labels.array[z]).tolist())
    assert np.allclose(volume.geometry.affine, image.geometry.affine)
    assert isinstance(volume.image, np.memmap)  # memory-mapped, not loaded


def test_cache_keys_do_not_collide_between_splits(phantom_root, tmp_path):
    train = case_cache_dir(tmp_path, phantom_root, phantom_root / "imagesTr" / "phantom_000_0000.nii.gz")
    test = case_cache_dir(tmp_path, phantom_root, phantom_root / "imagesTs" / "phantom_000_0000.nii.gz")
    assert train != test
    assert train == tmp_path / phantom_root.name / "imagesTr" / "phantom_000_0000"


def test_prepare_resumes_after_a_crash(phantom_root, tmp_path):
    jobs = [_job(phantom_root, tmp_path, f"phantom_{i:03d}") for i in range(3)]
    first = prepare_jobs(jobs[:2], progress=False)
    assert sorted(first.prepared) == ["phantom_000", "phantom_001"]
    done_meta = Path(jobs[0].case_dir) / "meta.json"
    stamp = done_meta.stat().st_mtime_ns
    # A crash mid-volume leaves only a temporary folder behind, never a half-written case folder.
    leftover = Path(jobs[2].case_dir).parent / ".phantom_002_0000.crashed"
    leftover.mkdir()
    (leftover / "image.npy").write_bytes(b"partial")
    assert not is_prepared(Path(jobs[2].case_dir))
    second = prepare_jobs(jobs, progress=False)
    assert second.prepared == ["phantom_002"]
    assert sorted(second.skipped) == ["phantom_000", "phantom_001"]
    assert done_meta.stat().st_mtime_ns == stamp  # finished volumes untouched
    assert is_prepared(Path(jobs[2].case_dir))


def test_a_killed_write_leaves_no_case_folder(phantom_root, tmp_path, monkeypatch):
    job = _job(phantom_root, tmp_path, "phantom_001")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("s2vnet.data.prepare.np.save", crash)
    with pytest.raises(OSError):
        prepare_case(job.image_file, job.label_file, "CT", 8, job.case_dir, job.case_id)
    assert not Path(job.case_dir).exists()
    assert list(Path(job.case_dir).parent.iterdir()) == []  # the temporary folder is removed too


def test_changed_source_is_prepared_again(phantom_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    job = _job(root, tmp_path / "cache", "phantom_000")
    assert prepare_jobs([job], progress=False).prepared == ["phantom_000"]
    image = Path(job.image_file)
    data = nib.load(image)
    nib.save(nib.Nifti1Image(np.asanyarray(data.dataobj) + 1, data.affine, data.header), image)
    assert prepare_jobs([job], progress=False).prepared == ["phantom_000"]


def _broken_dataset(phantom_root: Path, tmp_path: Path) -> Path:
    """A copy of the phantom data set with one bad volume of each kind the issue lists."""
    root = tmp_path / "Dataset901_Broken"
    shutil.copytree(phantom_root, root)
    images, labels = root / "imagesTr", root / "labelsTr"
    # 1: truncated (corrupt) NIfTI
    raw = (images / "phantom_001_0000.nii.gz").read_bytes()
    (images / "phantom_001_0000.nii.gz").write_bytes(raw[: len(raw) // 2])
    # 2: NaN voxels
    image = nib.load(images / "phantom_002_0000.nii.gz")
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), images / "phantom_002_0000.nii.gz")
    # 3: labels outside the class list, and a label volume whose grid differs from its image
    label = nib.load(labels / "phantom_003.nii.gz")
    values = np.asanyarray(label.dataobj).copy()
    values[0, 0, 0] = 42
    nib.save(nib.Nifti1Image(values, label.affine), labels / "phantom_003.nii.gz")
    return root


def test_prepare_cli_reports_bad_volumes_and_continues(phantom_root, tmp_path):
    root = _broken_dataset(phantom_root, tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("_BASE_: " + json.dumps(str(REPO / "configs/phantom/Base-Phantom.yaml")) + "\n")
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, str(REPO / "datasets/prepare.py"), "--config-file", str(config), "--dataset", "broken_train",
         "DATASETS.NNUNET", f'["broken={root}"]', "DATASETS.CACHE_DIR", str(cache), "DATASETS.TRAIN", '("broken_train",)',
         "DATASETS.TEST", "()"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr
    log = result.stderr
    assert "phantom_001_0000.nii.gz" in log and "phantom_002_0000.nii.gz" in log and "phantom_003.nii.gz" in log
    assert "NaN" in log or "nan" in log
    assert "42" in log
    # The good volume was prepared regardless.
    assert is_prepared(cache / root.name / "imagesTr" / "phantom_000_0000")
    assert not (cache / root.name / "imagesTr" / "phantom_001_0000").exists()


def test_image_label_shape_mismatch_is_reported(phantom_root, tmp_path):
    image = phantom_root / "imagesTr" / "phantom_000_0000.nii.gz"
    label = nib.load(phantom_root / "labelsTr" / "phantom_000.nii.gz")
    cropped = tmp_path / "cropped.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(label.dataobj)[:, :, :-2], label.affine), cropped)
    with pytest.raises(InputError, match="cropped.nii.gz"):
        prepare_case(str(image), str(cropped), "CT", 8, tmp_path / "case", "phantom_000")


def test_missing_dataset_folder_or_json_is_a_clear_error(tmp_path):
    from s2vnet.data.datasets import register_datasets_from_config

    cfg = phantom_config(tmp_path / "nowhere", tmp_path / "cache", name="missingfolder")
    with pytest.raises(InputError, match="nowhere"):
        register_datasets_from_config(cfg)
    (tmp_path / "nojson").mkdir()
    cfg = phantom_config(tmp_path / "nojson", tmp_path / "cache", name="missingjson")
    with pytest.raises(InputError, match="dataset.json"):
        register_datasets_from_config(cfg)
