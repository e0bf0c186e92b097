"""DICOM Segmentation objects (DICOM-SEG): predictions a hospital's viewer and PACS can store.

Labels predicted on a DICOM series (read with :func:`~s2vnet.data.volume_io.read_volume`) are
written as one DICOM-SEG object (through highdicom) that references the series, and read back
onto the series' grid::

    series = read_dicom_series("ct_dicom/")
    volume = read_volume("ct_dicom/")
    write_dicom_seg(labels, series, class_names, "seg.dcm", volume.geometry)
    assert (read_dicom_seg("seg.dcm", series, class_names, volume.geometry) == labels).all()

The object:

- **References its source.** It has the series' Study Instance UID and Frame of Reference UID,
  lists every instance of the series (Referenced Series Sequence), and each frame names the
  slice it segments (Derivation Image / Source Image Sequence) and has that slice's position and
  orientation.
- **One segment per predicted class** (not background, class 0), numbered 1, 2, ... in class id
  order. Its label is the class name and its coded segmented property (category, type and, for a
  paired organ, laterality; SNOMED CT) comes from ``segment_codes.json`` beside this module, which
  covers every organ of WORD, BTCV and AMOS; a class without an entry gets the generic Tissue
  codes. Classes the labels do not contain are left out (``keep_empty_segments`` keeps them); if
  no class is present every class is kept, as a DICOM-SEG needs at least one segment.
- **Binary** segmentation type; frames without any voxel of their segment are not stored.
- **Written atomically** (:func:`~s2vnet.utils.atomic.atomic_path`).

The source series must be one series of single-frame images, every file a DICOM image of it, each
with the UIDs and geometry attributes a reference needs (:func:`read_dicom_series` says which file
is not). Bad input raises :class:`~s2vnet.utils.errors.InputError` naming the file and the problem.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import highdicom as hd
import numpy as np
import pydicom
from nibabel.orientations import apply_orientation
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes as dicom_codes

from s2vnet import __version__
from s2vnet.data.volume_io import PathLike, VolumeGeometry, to_original_orientation
from s2vnet.utils.atomic import atomic_path
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "DICOM_SEG_SUFFIX",
    "DicomSeries",
    "SEGMENT_CODES_PATH",
    "SegmentCodes",
    "check_segment_labels",
    "instances_on_grid",
    "read_dicom_seg",
    "read_dicom_series",
    "segment_codes",
    "write_dicom_seg",
]

#: The file name ending of DICOM-SEG outputs.
DICOM_SEG_SUFFIX = ".dcm"
#: Class name -> coded segmented property (its sources: the file's "about").
SEGMENT_CODES_PATH = Path(__file__).with_name("segment_codes.json")

#: Attributes every source slice needs: the UIDs a reference is made of, and the geometry that
#: places the slice (and so each frame of the SEG) in the patient.
REQUIRED_ATTRIBUTES = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
)
#: Largest distance between a slice's stored position and where the volume's grid puts it, as a
#: fraction of the slice spacing (the volume reader refuses uneven spacing by the same margin).
SLICE_POSITION_TOLERANCE = 0.1
#: Largest difference between direction cosines taken as the same orientation.
ORIENTATION_TOLERANCE = 1e-3

# The software that made the segments (Algorithm Identification Sequence).
_ALGORITHM_NAME = "S2VNet"


# ---------------------------------------------------------------------------------------------
# The source series
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series: its folder and the headers of its slices (no pixel data), sorted along
    the slice normal (the order in which the volume reader stacks them)."""

    folder: Path
    instances: Tuple[Dataset, ...]

    @property
    def series_uid(self) -> str:
        return str(self.instances[0].SeriesInstanceUID)


def read_dicom_series(folder: PathLike) -> DicomSeries:
    """The headers of the DICOM series in ``folder``, checked to be what a DICOM-SEG can reference.

    Hidden files (names starting with ".") are ignored; every other entry must be a DICOM image of
    the one series.

    Raises:
        InputError: ``folder`` is not a folder or is empty; an entry that is not a DICOM file; a
            slice without one of :data:`REQUIRED_ATTRIBUTES` (e.g. a series anonymised without new
            UIDs) or a multi-frame image; files of more than one series; slices that disagree
            on study, frame of reference, size or orientation, or one instance twice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: a DICOM series is a folder of DICOM files, and this is not a folder")
    paths = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    if not paths:
        raise InputError(f"{folder}: the folder is empty, it holds no DICOM series")
    headers = [_read_header(path) for path in paths]
    for header in headers:
        _check_slice_header(header)
    _check_one_series(folder, headers)
    _check_slices_agree(headers)
    normal = _slice_normal(headers[0])
    ordered = sorted(headers, key=lambda header: float(np.dot(_position(header), normal)))
    return DicomSeries(folder=folder, instances=tuple(ordered))


def _read_header(path: Path) -> Dataset:
    if path.is_dir():
        raise InputError(f"{path}: a folder inside the DICOM series folder {path.parent}; it must hold only the files of one series")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise InputError(
            f"{path}: not a DICOM file (no DICOM file header); a DICOM series folder must hold only the files of its series"
        ) from None
    except (OSError, EOFError, ValueError) as error:
        raise InputError(f"{path}: cannot read the DICOM header ({type(error).__name__}: {error})") from None


def _file(header: Dataset) -> str:
    return str(getattr(header, "filename", "") or "a DICOM header")


def _check_slice_header(header: Dataset) -> None:
    missing = [name for name in REQUIRED_ATTRIBUTES if header.get(name) in (None, "", [])]
    if missing:
        raise InputError(
            f"{_file(header)}: {', '.join(missing)} missing or empty; a DICOM-SEG references each slice by its UIDs and "
            "places it by its geometry, so it cannot be made for this series (anonymised without new UIDs?); write NIfTI instead"
        )
    frames = int(header.get("NumberOfFrames") or 1)
    if frames > 1:
        raise InputError(f"{_file(header)}: a multi-frame image ({frames} frames); DICOM-SEG output needs a series of single-frame slices")


def _check_one_series(folder: Path, headers: Sequence[Dataset]) -> None:
    by_series: Dict[str, List[Dataset]] = {}
    for header in headers:
        by_series.setdefault(str(header.SeriesInstanceUID), []).append(header)
    if len(by_series) == 1:
        return
    listed = "; ".join(
        f"{uid} ({len(members)} files, e.g. {Path(_file(members[0])).name}"
        f"{', ' + str(members[0].SeriesDescription) if members[0].get('SeriesDescription') else ''})"
        for uid, members in by_series.items()
    )
    raise InputError(f"{folder} holds {len(by_series)} DICOM series, but a DICOM-SEG segments one: {listed}. Put each series in its own folder")


def _check_slices_agree(headers: Sequence[Dataset]) -> None:
    first = headers[0]
    seen: Dict[str, str] = {}
    for header in headers:
        for name in ("StudyInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
            if header.get(name) != first.get(name):
                raise InputError(
                    f"{_file(header)}: {name} {header.get(name)} differs from {first.get(name)} of {_file(first)} in the same series"
                )
        if not np.allclose(_orientation(header), _orientation(first), atol=ORIENTATION_TOLERANCE):
            raise InputError(
                f"{_file(header)}: ImageOrientationPatient {_orientation(header).tolist()} differs from "
                f"{_orientation(first).tolist()} of {_file(first)}: the slices of one volume share their orientation"
            )
        other = seen.setdefault(str(header.SOPInstanceUID), _file(header))
        if other != _file(header):
            raise InputError(f"{_file(header)} and {other} are the same instance (SOP Instance UID {header.SOPInstanceUID})")


def _position(header: Dataset) -> np.ndarray:
    return np.asarray([float(value) for value in header.ImagePositionPatient], dtype=np.float64)


def _orientation(header: Dataset) -> np.ndarray:
    return np.asarray([float(value) for value in header.ImageOrientationPatient], dtype=np.float64)


def _slice_normal(header: Dataset) -> np.ndarray:
    orientation = _orientation(header)
    return np.cross(orientation[:3], orientation[3:])


def instances_on_grid(series: DicomSeries, geometry: VolumeGeometry) -> List[Dataset]:
    """The slices of ``series`` in the order of the volume's slice axis, checked to be the slices
    of the grid ``geometry`` (the volume read from the series).

    Raises:
        InputError: ``geometry`` was not read from a DICOM series, or its number, size,
            orientation or positions of slices are not those of ``series``.
    """
    itk_grid = (geometry.itk_origin, geometry.itk_direction, geometry.itk_spacing)
    if geometry.source_format != "dicom" or any(part is None for part in itk_grid):
        raise InputError(
            f"{series.folder}: the labels' grid was not read from a DICOM series ({geometry.source_format}); read the volume from the series folder"
        )
    columns, rows, count = geometry.shape
    first = series.instances[0]
    if (len(series.instances), int(first.Rows), int(first.Columns)) != (count, rows, columns):
        raise InputError(
            f"{series.folder}: {len(series.instances)} slices of {first.Rows} x {first.Columns}, "
            f"but the volume has {count} of {rows} x {columns}: the series and the volume do not match"
        )
    direction = np.asarray(geometry.itk_direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(_orientation(first), np.concatenate([direction[:, 0], direction[:, 1]]), atol=ORIENTATION_TOLERANCE):
        raise InputError(f"{series.folder}: the slices' orientation {_orientation(first).tolist()} is not the volume's")
    positions = np.stack([_position(instance) for instance in series.instances])
    order = np.argsort(positions @ direction[:, 2], kind="stable")
    step = float(geometry.itk_spacing[2])
    expected = np.asarray(geometry.itk_origin) + np.outer(np.arange(count) * step, direction[:, 2])
    distances = np.linalg.norm(positions[order] - expected, axis=1)
    worst = int(np.argmax(distances))
    if distances[worst] > SLICE_POSITION_TOLERANCE * step:
        raise InputError(
            f"{_file(series.instances[order[worst]])}: the slice lies {distances[worst]:.3g} mm from slice {worst} of the volume's grid; "
            "the series and the volume do not match"
        )
    return [series.instances[index] for index in order]


def _as_series(source_series: Union[DicomSeries, PathLike]) -> DicomSeries:
    return source_series if isinstance(source_series, DicomSeries) else read_dicom_series(source_series)


# ---------------------------------------------------------------------------------------------
# Segment codes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentCodes:
    """The coded segmented property of one class: category (CID 7150), type (CID 7151) and an
    optional laterality modifier of the type (CID 244)."""

    category: hd.sr.CodedConcept
    type: hd.sr.CodedConcept
    modifier: Optional[hd.sr.CodedConcept] = None


def _normalised(class_name: str) -> str:
    """'Kidney Left' and 'prostate/uterus' -> 'kidney_left', 'prostate_uterus'."""
    return "_".join("".join(c if c.isascii() and c.isalnum() else " " for c in class_name.lower()).split())


@functools.lru_cache(maxsize=1)
def _code_table() -> dict:
    return json.loads(SEGMENT_CODES_PATH.read_text())


def _concept(key: str) -> hd.sr.CodedConcept:
    code = _code_table()["codes"][key]
    return hd.sr.CodedConcept(value=code["value"], scheme_designator=code["scheme"], meaning=code["meaning"])


def segment_codes(class_name: str) -> SegmentCodes:
    """The coded segmented property of ``class_name`` from :data:`SEGMENT_CODES_PATH`; the generic
    Tissue category and type for a class it has no entry for."""
    table = _code_table()
    entry = table["classes"].get(_normalised(class_name), table["generic"])
    modifier = entry.get("modifier")
    return SegmentCodes(_concept(entry["category"]), _concept(entry["type"]), _concept(modifier) if modifier else None)


def check_segment_labels(class_names: Sequence[str]) -> None:
    """Every class name but background's (class 0) can be a segment label: DICOM's LO, 1 to 64
    characters, no backslash (its value separator) and no control characters. The label is the
    class name unchanged, so that reading the SEG back finds the class.

    Raises:
        InputError: naming the first class name that cannot.
    """
    for class_name in class_names[1:]:
        if not class_name or len(class_name) > 64 or "\\" in class_name or not class_name.isprintable():
            raise InputError(
                f"class name {class_name!r} cannot be a DICOM segment label (1 to 64 printable characters, no backslash); "
                "rename the class in the model description"
            )


def _segment_description(number: int, class_name: str, interactive: bool) -> hd.seg.SegmentDescription:
    coded = segment_codes(class_name)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=class_name,
        segmented_property_category=coded.category,
        segmented_property_type=coded.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if interactive else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=_ALGORITHM_NAME, family=dicom_codes.cid7162.ArtificialIntelligence, version=__version__
        ),
    )
    if coded.modifier is not None:
        # highdicom takes no modifier argument: it belongs inside the property type's code item.
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [coded.modifier]
    return description


# ---------------------------------------------------------------------------------------------
# Writing and reading
# ---------------------------------------------------------------------------------------------


def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.uint16


def _label_frames(labels: np.ndarray, geometry: VolumeGeometry, num_classes: int, path: Path) -> np.ndarray:
    """Canonical ``(z, y, x)`` labels as the series' frames: ``(slice, row, column)``."""
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"labels for {path} must be integers, got {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels for {path} range from {labels.min()} to {labels.max()}, outside the {num_classes} classes")
    labels = labels.astype(_label_dtype(num_classes), copy=False)  # bool too: frames index a lookup table
    data_ijk = to_original_orientation(labels, geometry)  # i = column, j = row, k = slice, as ITK reads a series
    return np.ascontiguousarray(data_ijk.transpose(2, 1, 0))


def _segment_classes(frames: np.ndarray, class_names: Sequence[str], keep_empty: bool, path: Path) -> List[int]:
    """The class ids that get a segment, in segment number order."""
    if len(class_names) < 2:
        raise ValueError(f"{path}: a DICOM-SEG needs at least one class besides background, got class names {list(class_names)}")
    counts = np.bincount(frames.ravel(), minlength=len(class_names))
    every_class = list(range(1, len(class_names)))
    present = [class_id for class_id in every_class if counts[class_id] > 0]
    if keep_empty:
        return every_class
    if not present:
        logger.warning("%s: no class was segmented; the DICOM-SEG lists every class as an empty segment", path)
        return every_class
    return present


def _series_number(source: Dataset) -> int:
    """The SEG's series number: its source's plus 1000 (viewers list series by number)."""
    try:
        return int(source.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def write_dicom_seg(
    labels: np.ndarray,
    source_series: Union[DicomSeries, PathLike],
    class_names: Sequence[str],
    path: PathLike,
    geometry: VolumeGeometry,
    *,
    keep_empty_segments: bool = False,
    interactive: bool = False,
) -> None:
    """Write canonical ``(z, y, x)`` labels predicted on a DICOM series as a DICOM-SEG file, atomically.

    Args:
        labels: class ids (0 = background) on the grid of ``geometry``, as the predictor returns them.
        source_series: the series (a :class:`DicomSeries`, or its folder).
        class_names: the model's class names, index = class id; they label the segments.
        path: the output file (conventionally ``.dcm``).
        geometry: that of the volume read from the series (``read_volume(folder).geometry``).
        keep_empty_segments: also describe the classes the labels do not contain.
        interactive: the labels come from clicks: the segments are SEMIAUTOMATIC, else AUTOMATIC.

    Raises:
        InputError: a class name that cannot be a segment label (:func:`check_segment_labels`), a
            series :func:`read_dicom_series` refuses, or one that is not the volume of
            ``geometry`` (another number, size, orientation or position of slices).
        ValueError: labels that are not integers on ``geometry``'s canonical grid, or outside
            the classes.
    """
    path = Path(path)
    check_segment_labels(class_names)
    series = _as_series(source_series)
    instances = instances_on_grid(series, geometry)
    frames = _label_frames(labels, geometry, len(class_names), path)
    class_ids = _segment_classes(frames, class_names, keep_empty_segments, path)
    segment_of_class = np.zeros(len(class_names), dtype=np.uint8 if len(class_ids) < 256 else np.uint16)
    segment_of_class[class_ids] = np.arange(1, len(class_ids) + 1)
    segmentation = hd.seg.Segmentation(
        source_images=instances,
        pixel_array=segment_of_class[frames],  # a label map: highdicom splits it into one binary segment per number
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description(number, class_names[class_id], interactive) for number, class_id in enumerate(class_ids, 1)],
        series_instance_uid=hd.UID(),
        series_number=_series_number(instances[0]),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_ALGORITHM_NAME,
        manufacturer_model_name=_ALGORITHM_NAME,
        software_versions=__version__,
        device_serial_number="0",
        content_label="S2VNET",
        content_description=f"S2VNet {'interactive' if interactive else 'automatic'} segmentation",
        series_description=f"S2VNet segmentation of {series.instances[0].get('SeriesDescription') or 'series ' + series.series_uid}"[:64],
    )
    with atomic_path(path, suffix=DICOM_SEG_SUFFIX) as tmp:
        segmentation.save_as(tmp)
    logger.debug("wrote DICOM-SEG %s: %d segments, %d frames", path, len(class_ids), int(segmentation.NumberOfFrames))


def read_dicom_seg(
    path: PathLike, source_series: Union[DicomSeries, PathLike], class_names: Sequence[str], geometry: VolumeGeometry
) -> np.ndarray:
    """Read a DICOM-SEG of ``source_series`` back as canonical ``(z, y, x)`` class ids on ``geometry``'s grid.

    The inverse of :func:`write_dicom_seg`: segments are mapped to class ids by their label (the
    class name), voxels in no segment are background.

    Raises:
        InputError: not a readable DICOM-SEG, one of another series, a segment label that is none
            of ``class_names``, overlapping segments, or a series that is not the volume of ``geometry``.
    """
    path = Path(path)
    series = _as_series(source_series)
    try:
        segmentation = hd.seg.segread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError) as error:
        raise InputError(f"{path}: cannot read as a DICOM Segmentation ({type(error).__name__}: {error})") from None
    referenced = sorted(str(item.SeriesInstanceUID) for item in segmentation.ReferencedSeriesSequence)
    if series.series_uid not in referenced:
        raise InputError(f"{path} segments the series {referenced}, not the series {series.series_uid} in {series.folder}")
    ids = {name: class_id for class_id, name in enumerate(class_names)}
    numbers = segmentation.get_segment_numbers()
    class_of_segment = np.zeros(max(numbers, default=0) + 1, dtype=_label_dtype(len(class_names)))
    for number in numbers:
        label = str(segmentation.get_segment_description(number).SegmentLabel)
        if label not in ids:
            raise InputError(f"{path}: segment {number} is labelled {label!r}, which is none of the classes {list(class_names)}")
        class_of_segment[number] = ids[label]
    instances = instances_on_grid(series, geometry)
    try:
        segment_frames = segmentation.get_pixels_by_source_instance(
            [str(instance.SOPInstanceUID) for instance in instances], combine_segments=True
        )
    except (KeyError, ValueError, RuntimeError) as error:
        raise InputError(f"{path}: its frames do not fit the series in {series.folder} ({error})") from None
    data_ijk = class_of_segment[segment_frames].transpose(2, 1, 0)
    # The inverse of to_original_orientation: reorient to RAS, then (x, y, z) -> (z, y, x).
    return np.ascontiguousarray(apply_orientation(data_ijk, geometry.ornt).transpose(2, 1, 0))
