"""The prepare step: cache contents, resuming after a crash, bad volumes reported without stopping."""
import json
import logging
import os
import shutil
import stat
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


# ------------------------------------------------------------------ the cache is keyed on what it was built from
def _copied_dataset(phantom_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data" / phantom_root.name
    shutil.copytree(phantom_root, root)
    return root


def test_edited_label_file_is_prepared_again(phantom_root, tmp_path):
    root = _copied_dataset(phantom_root, tmp_path)
    job = _job(root, tmp_path / "cache", "phantom_000")
    assert prepare_jobs([job], progress=False).prepared == ["phantom_000"]
    label = nib.load(job.label_file)
    values = np.asanyarray(label.dataobj).copy()
    values[values == 1] = 2  # a corrected annotation; the image is untouched
    nib.save(nib.Nifti1Image(values, label.affine, label.header), job.label_file)
    assert prepare_jobs([job], progress=False).prepared == ["phantom_000"]
    assert not np.any(PreparedVolume(job.case_dir).label == 1)


def test_unchanged_files_with_a_new_mtime_are_reused(phantom_root, tmp_path):
    root = _copied_dataset(phantom_root, tmp_path)
    job = _job(root, tmp_path / "cache", "phantom_000")
    prepare_jobs([job], progress=False)
    for path in (job.image_file, job.label_file):  # touched or copied: same content, other mtime
        os.utime(path, (1e9, 1e9))
    assert prepare_jobs([job], progress=False).skipped == ["phantom_000"]


@pytest.mark.parametrize("change", [{"modality": "MR"}, {"num_classes": 9}, {"raw_ignore_value": 7}, {"label_file": None}])
def test_changed_settings_are_prepared_again(change, phantom_root, tmp_path):
    job = _job(phantom_root, tmp_path, "phantom_000")
    prepare_jobs([job], progress=False)
    changed = PrepareJob(**{**job.__dict__, **change})
    assert prepare_jobs([changed], progress=False).prepared == ["phantom_000"]
    assert prepare_jobs([changed], progress=False).skipped == ["phantom_000"]


def test_modality_change_in_dataset_json_is_prepared_again(phantom_root, tmp_path):
    from s2vnet.data.datasets import register_nnunet_dataset
    from s2vnet.data.prepare import jobs_for_dataset

    root = _copied_dataset(phantom_root, tmp_path)
    cache = tmp_path / "cache"
    register_nnunet_dataset("modalityct", root)
    assert prepare_jobs(jobs_for_dataset("modalityct_train", cache), progress=False).prepared
    dataset_json = root / "dataset.json"
    spec = json.loads(dataset_json.read_text())
    spec["channel_names"] = {"0": "MRI"}
    dataset_json.write_text(json.dumps(spec))
    register_nnunet_dataset("modalitymr", root)  # the same folder, read again
    jobs = jobs_for_dataset("modalitymr_train", cache)
    report = prepare_jobs(jobs, progress=False)
    assert sorted(report.prepared) == sorted(job.case_id for job in jobs) and not report.skipped
    assert {PreparedVolume(job.case_dir).meta["modality"] for job in jobs} == {"MR"}


def test_uint16_ct_with_hu_offset_warns_when_prepared(phantom_root, tmp_path, caplog):
    image = nib.load(phantom_root / "imagesTr" / "phantom_000_0000.nii.gz")
    offset = tmp_path / "offset_0000.nii.gz"
    hu = np.asanyarray(image.dataobj)
    nib.save(nib.Nifti1Image((np.clip(hu, -1024, None) + 1024).astype(np.uint16), image.affine), offset)
    with caplog.at_level(logging.WARNING, logger="s2vnet.data.volume_io"):
        prepare_case(str(offset), None, "CT", 8, tmp_path / "cache" / "offset", "offset")
    assert "offset_0000.nii.gz" in caplog.text and "Hounsfield" in caplog.text


# ------------------------------------------------------------------ leftovers of killed runs, permissions
def test_prepare_removes_the_folder_of_a_killed_run(phantom_root, tmp_path):
    job = _job(phantom_root, tmp_path, "phantom_000")
    code = (  # a prepare run killed by SIGKILL while it writes the image array
        "import os, signal, sys\n"
        "import numpy as np\n"
        "from s2vnet.data.prepare import prepare_case\n"
        "def killed(path, array):\n"
        "    open(path, 'wb').write(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "np.save = killed\n"
        "prepare_case(sys.argv[1], sys.argv[2], 'CT', 8, sys.argv[3], 'phantom_000')\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, job.image_file, job.label_file, job.case_dir], timeout=120)
    assert killed.returncode == -9
    parent = Path(job.case_dir).parent
    leftovers = [p.name for p in parent.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".phantom_000_0000.")
    assert prepare_jobs([job], progress=False).prepared == ["phantom_000"]
    assert [p.name for p in parent.iterdir()] == ["phantom_000_0000"]


def test_case_folders_get_the_umask_permissions(phantom_root, tmp_path):
    job = _job(phantom_root, tmp_path, "phantom_000")
    previous = os.umask(0o022)
    try:
        prepare_case(job.image_file, job.label_file, "CT", 8, job.case_dir, job.case_id)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(Path(job.case_dir).stat().st_mode) == 0o755
