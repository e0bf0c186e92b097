"""DICOM in, DICOM out: predictions on a real CT DICOM series written as DICOM-SEG objects
(s2vnet/data/dicom_seg.py, tools/predict.py --output-format dicom-seg), read back, compared with
the NIfTI output voxel for voxel, checked against the source series and validated with dciodvfy."""
import logging
import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr._concepts_dict import concepts
from pydicom.uid import generate_uid

from conftest import DATA_DIR
from s2vnet.data.datasets.builtin import AMOS_CLASSES, BTCV_CLASSES, WORD_CLASSES
from s2vnet.data.dicom_seg import SEGMENT_CODES_PATH, read_dicom_seg, read_dicom_series, segment_codes, write_dicom_seg
from s2vnet.data.volume_io import read_label_volume, read_volume
from s2vnet.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SOURCE = DATA_DIR / "totalseg_dicom"
# The classes of the tiny model: WORD's, so that predicted segments carry organ codes.
CLASS_NAMES = WORD_CLASSES


def _with_uids(target: Path, study_uid: str, series_uid: str) -> Path:
    """A copy of the test series that has UIDs: the stored files were anonymised with empty ones."""
    target.mkdir(parents=True)
    for path in sorted(SOURCE.glob("CT.*")):
        dataset = pydicom.dcmread(path)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.save_as(target / path.name)
    return target


@pytest.fixture(scope="module")
def series_folder(tmp_path_factory) -> Path:
    return _with_uids(tmp_path_factory.mktemp("dicom") / "ct", generate_uid(entropy_srcs=["s2vnet study"]), generate_uid(entropy_srcs=["s2vnet series"]))


@pytest.fixture
def series_copy(series_folder, tmp_path) -> Path:
    """A copy of the series that a test may damage."""
    return Path(shutil.copytree(series_folder, tmp_path / "ct"))


@pytest.fixture(scope="module")
def described_weights(tmp_path_factory):
    """A config and random weights of a tiny model that describes itself with WORD's classes;
    slices are resized to 64 pixels for speed (labels still come back on the 512 x 512 grid)."""
    from conftest import tiny_checkpoint
    from s2vnet.checkpoint import ModelDescription

    description = ModelDescription(CLASS_NAMES, len(CLASS_NAMES), "CT")
    return tiny_checkpoint(
        tmp_path_factory.mktemp("described_weights"), len(CLASS_NAMES), seed=3, description=description, **{"TEST.INPUT_SIZE": 64}
    )


@pytest.fixture(scope="module")
def predict_tool():
    """tools/predict.py as a module, so that its main() runs in this process."""
    from conftest import load_tool

    return load_tool("predict", "predict_tool_dicom_seg")


def _run(predict_tool, weights, *args) -> int:
    config, checkpoint = weights
    return predict_tool.main(["--config-file", str(config), *map(str, args), "MODEL.WEIGHTS", str(checkpoint)])


@pytest.fixture(scope="module")
def predictions(predict_tool, described_weights, series_folder, tmp_path_factory):
    """The series predicted by one model to NIfTI and to DICOM-SEG: (nifti path, seg path)."""
    out = tmp_path_factory.mktemp("predictions")
    assert _run(predict_tool, described_weights, "--input", series_folder, "--output", out / "seg.nii.gz") == 0
    assert _run(predict_tool, described_weights, "--input", series_folder, "--output", out / "seg.dcm", "--output-format", "dicom-seg") == 0
    return out / "seg.nii.gz", out / "seg.dcm"


def _instances_by_position(folder: Path):
    """The source slices, read independently of s2vnet, sorted along the slice normal (z here)."""
    instances = [pydicom.dcmread(path, stop_before_pixels=True) for path in folder.iterdir()]
    return sorted(instances, key=lambda instance: float(instance.ImagePositionPatient[2]))


# ------------------------------------------------------------------ the codes
def test_every_organ_of_word_btcv_and_amos_has_a_checked_snomed_code():
    """Every code in the mapping file is a SNOMED CT concept of pydicom's tables (generated from
    DICOM PS3.16) with exactly its meaning, listed in the context group the file names; every
    organ of the three benchmarks has an entry, other names get the generic Tissue code."""
    import json

    table = json.loads(SEGMENT_CODES_PATH.read_text())
    for key, code in table["codes"].items():
        assert code["scheme"] == "SCT", key
        keywords = [kw for kw, entries in concepts["SCT"].items() if entries.get(code["value"], (None,))[0] == code["meaning"]]
        assert keywords, f"{key}: SCT {code['value']} {code['meaning']!r} is not in pydicom's SNOMED CT table"
        assert set(keywords) & set(cid_concepts[code["cid"]]["SCT"]), f"{key}: SCT {code['value']} is not in CID {code['cid']}"
    organs = sorted(set(WORD_CLASSES + BTCV_CLASSES + AMOS_CLASSES) - {"background"})
    assert not [name for name in organs if name not in table["classes"]]
    for name in organs:
        assert segment_codes(name).category.value == "91723000", name  # Anatomical Structure
    assert segment_codes("kidney_left").type.value == "64033007" and segment_codes("kidney_left").modifier.meaning == "Left"
    assert segment_codes("Kidney Right") == segment_codes("kidney_right")
    assert segment_codes("prostate/uterus") == segment_codes("prostate_uterus")
    generic = segment_codes("tumour_7")
    assert (generic.category.value, generic.type.value, generic.modifier) == ("85756007", "85756007", None)


# ------------------------------------------------------------------ prediction to DICOM-SEG
def _segment_labels_by_number(segmentation) -> dict:
    return {number: str(segmentation.get_segment_description(number).SegmentLabel) for number in segmentation.get_segment_numbers()}


def test_the_dicom_seg_equals_the_nifti_output_voxel_for_voxel(predictions, series_folder):
    nifti, seg_path = predictions
    segmentation = hd.seg.segread(seg_path)
    instances = _instances_by_position(series_folder)
    frames = segmentation.get_pixels_by_source_instance([str(i.SOPInstanceUID) for i in instances], combine_segments=True)
    class_of_segment = np.zeros(max(segmentation.get_segment_numbers()) + 1, dtype=np.uint8)
    for number, label in _segment_labels_by_number(segmentation).items():
        class_of_segment[number] = CLASS_NAMES.index(label)
    # The NIfTI lies on the series' grid as ITK reads it: i = column, j = row, k = slice.
    expected = np.asanyarray(nib.load(nifti).dataobj).transpose(2, 1, 0)
    assert frames.shape == expected.shape == (20, 512, 512)
    np.testing.assert_array_equal(class_of_segment[frames], expected)
    present = sorted(int(c) for c in np.unique(expected) if c)
    assert len(present) >= 2, "the random model should predict several classes"
    assert list(_segment_labels_by_number(segmentation).values()) == [CLASS_NAMES[c] for c in present]  # empty classes left out
    # And s2vnet's reader gives the same canonical labels as reading the NIfTI.
    volume = read_volume(series_folder)
    np.testing.assert_array_equal(
        read_dicom_seg(seg_path, series_folder, CLASS_NAMES, volume.geometry), read_label_volume(nifti, reference=volume).array
    )


def test_the_dicom_seg_references_its_source_and_its_geometry(predictions, series_folder):
    _, seg_path = predictions
    seg = pydicom.dcmread(seg_path)
    instances = _instances_by_position(series_folder)
    by_uid = {str(i.SOPInstanceUID): i for i in instances}
    first = instances[0]
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence} == set(by_uid)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [float(v) for v in first.ImageOrientationPatient]
    measures = shared.PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in first.PixelSpacing]
    assert float(measures.SliceThickness) == float(first.SliceThickness)
    assert (seg.Rows, seg.Columns) == (first.Rows, first.Columns)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        instance = by_uid[str(source.ReferencedSOPInstanceUID)]
        assert source.ReferencedSOPClassUID == instance.SOPClassUID
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == [float(v) for v in instance.ImagePositionPatient]
    for item in seg.SegmentSequence:
        codes = segment_codes(str(item.SegmentLabel))
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.category.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.type.value
        modifiers = item.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence", [])
        assert [m.CodeValue for m in modifiers] == ([codes.modifier.value] if codes.modifier else [])
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "S2VNet"


def test_the_dicom_seg_passes_dciodvfy(predictions, series_folder, tmp_path):
    """dciodvfy (Debian's dicom3tools) checks the objects against the DICOM standard's IOD rules:
    the predicted one, and one with a segment for every class of the mapping file and one without
    a code (all codes, laterality modifiers and the generic code). Any error fails the test;
    warnings (the source's own empty Patient ID and Study ID and its private coding scheme,
    copied over) are allowed."""
    validator = shutil.which("dciodvfy")
    if validator is None:
        if os.environ.get("CI"):  # CI installs it (scripts/test.sh): a missing validator there is a failure
            pytest.fail("dciodvfy is not installed in CI: scripts/test.sh should have installed dicom3tools")
        pytest.skip("dciodvfy is not installed (Debian/Ubuntu package dicom3tools; scripts/test.sh installs it when run as root)")
    import json

    names = ["background", *json.loads(SEGMENT_CODES_PATH.read_text())["classes"], "no_code_for_this"]
    volume = read_volume(series_folder)
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    for class_id in range(1, len(names)):
        labels[class_id % 20, 20 * class_id : 20 * class_id + 10, 100:200] = class_id
    every_code = tmp_path / "every_code.dcm"
    write_dicom_seg(labels, series_folder, names, every_code, volume.geometry)
    for path in (predictions[1], every_code):
        result = subprocess.run([validator, str(path)], capture_output=True, text=True, timeout=120)
        report = (result.stdout + result.stderr).splitlines()
        assert "Segmentation" in report, report  # the IOD it recognised
        errors = [line for line in report if line.startswith("Error")]
        assert not errors, "\n".join(report)


def test_a_folder_of_series_gets_one_dicom_seg_each(predict_tool, described_weights, series_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO)  # the skip message is INFO; an earlier tool run may have raised the root level
    inputs = tmp_path / "series"
    for name in ("case_a", "case_b"):
        shutil.copytree(series_folder, inputs / name)
    out = tmp_path / "segs"
    assert _run(predict_tool, described_weights, "--input", inputs, "--output", out, "--output-format", "dicom-seg") == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_a.dcm", "case_b.dcm"]
    assert _run(predict_tool, described_weights, "--input", inputs, "--output", out, "--output-format", "dicom-seg") == 0
    assert "2 case(s) have all their outputs already and are skipped" in caplog.text


# ------------------------------------------------------------------ the Python API
def test_write_and_read_back_through_the_python_api(series_folder, tmp_path, caplog):
    volume = read_volume(series_folder)
    series = read_dicom_series(series_folder)
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[3:9, 100:200, 150:300] = CLASS_NAMES.index("liver")
    labels[10:15, 300:340, 20:60] = CLASS_NAMES.index("head_of_femur_left")
    path = tmp_path / "out" / "seg.dcm"
    write_dicom_seg(labels, series, CLASS_NAMES, path, volume.geometry, interactive=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["seg.dcm"]  # no temporary left
    np.testing.assert_array_equal(read_dicom_seg(path, series, CLASS_NAMES, volume.geometry), labels)
    seg = hd.seg.segread(path)
    assert list(_segment_labels_by_number(seg).values()) == ["liver", "head_of_femur_left"]
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert seg.NumberOfFrames == 6 + 5  # only the frames that hold a segment

    write_dicom_seg(labels, series_folder, CLASS_NAMES, path, volume.geometry, keep_empty_segments=True)
    assert list(_segment_labels_by_number(hd.seg.segread(path)).values()) == list(CLASS_NAMES[1:])
    np.testing.assert_array_equal(read_dicom_seg(path, series, CLASS_NAMES, volume.geometry), labels)

    caplog.set_level(logging.WARNING)
    write_dicom_seg(np.zeros_like(labels), series, CLASS_NAMES, path, volume.geometry)
    assert "no class was segmented; the DICOM-SEG lists every class as an empty segment" in caplog.text
    assert not read_dicom_seg(path, series, CLASS_NAMES, volume.geometry).any()
    with pytest.raises(InputError, match=r"segment 1 is labelled 'liver', which is none of the classes"):
        read_dicom_seg(path, series, ["background", "spleen"], volume.geometry)
    with pytest.raises(InputError, match="cannot be a DICOM segment label"):
        write_dicom_seg(labels, series, ["background", "liver\\left"], tmp_path / "bad.dcm", volume.geometry)
    assert not (tmp_path / "bad.dcm").exists()


def test_a_failed_write_leaves_no_partial_file(series_folder, tmp_path, monkeypatch):
    volume = read_volume(series_folder)
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[4:8, 200:250, 200:250] = 1
    path = tmp_path / "seg.dcm"
    write_dicom_seg(labels, series_folder, CLASS_NAMES, path, volume.geometry)
    before = path.read_bytes()

    def fail_half_way(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"DICM half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", fail_half_way)
    with pytest.raises(OSError, match="No space left"):
        write_dicom_seg(labels * 2, series_folder, CLASS_NAMES, path, volume.geometry)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]


# ------------------------------------------------------------------ bad inputs
def _fails_without_output(predict_tool, weights, source, out: Path, expected_rc: int) -> None:
    rc = _run(predict_tool, weights, "--input", source, "--output", out / "seg.dcm", "--output-format", "dicom-seg")
    assert rc == expected_rc
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())  # no output, no temporary


def test_a_series_with_a_missing_slice_is_refused(predict_tool, described_weights, series_copy, tmp_path, caplog):
    Path(_instances_by_position(series_copy)[10].filename).unlink()  # a slice from the middle
    _fails_without_output(predict_tool, described_weights, series_copy, tmp_path / "out", 1)
    assert f"{series_copy}: the DICOM series has uneven slice positions" in caplog.text and "missing or duplicate slices?" in caplog.text


def test_mixed_series_in_one_folder_are_refused(predict_tool, described_weights, series_copy, tmp_path, caplog):
    other_uid = generate_uid()
    for index, path in enumerate(sorted(series_copy.iterdir())[:3]):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = other_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.SeriesDescription = "localizer"
        dataset.save_as(series_copy / f"other_{index}.dcm")
    _fails_without_output(predict_tool, described_weights, series_copy, tmp_path / "out", 1)
    assert f"{series_copy} holds 2 DICOM series, but a DICOM-SEG segments one" in caplog.text
    assert f"{other_uid} (3 files, e.g. other_0.dcm, localizer)" in caplog.text and "(20 files" in caplog.text


def test_a_file_that_is_not_dicom_in_the_series_folder_is_refused(predict_tool, described_weights, series_copy, tmp_path, caplog):
    (series_copy / "notes.txt").write_text("scanned on Tuesday\n")
    _fails_without_output(predict_tool, described_weights, series_copy, tmp_path / "out", 1)
    assert f"{series_copy / 'notes.txt'}: not a DICOM file" in caplog.text


def test_a_series_without_uids_is_refused(predict_tool, described_weights, tmp_path, caplog):
    """The test series as stored: anonymised with empty UIDs, nothing a DICOM-SEG could reference."""
    stored = tmp_path / "ct"
    stored.mkdir()
    for path in SOURCE.glob("CT.*"):
        shutil.copy(path, stored / path.name)
    _fails_without_output(predict_tool, described_weights, stored, tmp_path / "out", 1)
    assert "SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID missing or empty" in caplog.text


def test_a_volume_file_with_dicom_seg_output_is_refused_before_the_model_loads(predict_tool, described_weights, tmp_path, caplog, monkeypatch):
    import s2vnet.inference

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the input cannot give a DICOM-SEG")

    monkeypatch.setattr(s2vnet.inference, "load_predictor", refuse)
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), ct)
    _fails_without_output(predict_tool, described_weights, ct, tmp_path / "out", 2)
    assert f"--output-format dicom-seg: the input {ct} is not a DICOM series" in caplog.text
    assert _run(predict_tool, described_weights, "--input", ct, "--output", tmp_path / "seg.nii.gz", "--keep-empty-segments") == 2
    assert "--keep-empty-segments is for --output-format dicom-seg" in caplog.text
