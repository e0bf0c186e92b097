"""The prepare step: raw volumes -> a memory-mappable slice cache.

Decompressing a NIfTI per training sample is far too slow, so every volume is read once,
reoriented to the canonical (z, y, x) grid, intensity-normalised to uint8 (CT window / MRI
percentiles) and written as two ``.npy`` arrays that training memory-maps, plus ``meta.json``:

    <cache>/<data set folder name>/<image path inside it, without extension>/
        image.npy   uint8 (Z, Y, X)
        label.npy   uint8 (Z, Y, X)   (absent for unlabelled volumes)
        meta.json   spacing, geometry (to write back), modality, per-slice class presence, built_from

The step is resumable and atomic per volume: each case is written into a temporary folder that is
renamed into place when complete (:func:`~s2vnet.utils.atomic.atomic_directory`), so a case folder
either is finished or does not exist. Bad volumes are reported (file and problem) without stopping
the others.

A cached case is reused only if it was built from what the job asks for now (``meta.json``'s
``built_from``): the same image and label file contents, and the same settings that change the
arrays (modality, class count, ignore label, intensity window). A file counts as unchanged when
its size and mtime are those recorded, or, if only its mtime differs (a touch, a copy), when its
SHA-256 is; a source file that no longer exists leaves the cache as it is.
"""
import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from s2vnet.data.intensity import CT_WINDOW, MRI_PERCENTILES, normalize_intensity
from s2vnet.data.volume_io import VolumeGeometry, read_label_volume, read_volume, warn_if_not_hounsfield
from s2vnet.utils.atomic import atomic_directory
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
IGNORE_VALUE = 255  # label of voxels without ground truth in the cache (INPUT.IGNORE_LABEL)
META_NAME = "meta.json"


def case_cache_dir(cache_root: os.PathLike, dataset_root: os.PathLike, image_file: os.PathLike) -> Path:
    """Where one volume lives in the cache: the raw data set's folder name, then the image's path
    inside it (``imagesTr/word_0001``). Registrations that share a volume (a data set's "all" and
    "train" splits) share its cache entry, and equal case ids in different folders (imagesTr and
    imagesTs of an nnU-Net data set often reuse them) never collide."""
    root = Path(dataset_root).resolve()
    image = Path(image_file).resolve()
    try:
        relative = image.relative_to(root)
    except ValueError:  # an image outside its data set's folder: key it by its own folder name
        relative = Path(image.parent.name) / image.name
    name = relative.name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(cache_root) / root.name / relative.parent / name


@dataclass
class PrepareJob:
    case_id: str
    image_file: str
    label_file: Optional[str]
    modality: str
    num_classes: int
    case_dir: str
    raw_ignore_value: Optional[int] = None


def _source_files(path: Path) -> List[Path]:
    """The files a volume is read from: the file itself, or the files of a DICOM folder."""
    return sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]


def _stat_signature(path: Path) -> Dict[str, int]:
    stats = [f.stat() for f in _source_files(path)]
    return {"size": sum(s.st_size for s in stats), "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in _source_files(path):
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _fingerprint(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """Size, mtime and SHA-256 of a source file or DICOM folder (None for no file)."""
    if not path:
        return None
    return {**_stat_signature(Path(path)), "sha256": _content_hash(Path(path))}


def _unchanged(recorded: Optional[Dict[str, Any]], path: Optional[str]) -> bool:
    """Whether ``path`` still holds what ``recorded`` (its :func:`_fingerprint`) describes."""
    if recorded is None or not path:
        return recorded is None and not path  # a label file added or dropped is a change
    if not Path(path).exists():
        return True  # raw data removed after preparing: the cache is all there is
    current = _stat_signature(Path(path))
    if current["size"] != recorded["size"]:
        return False
    # Same size and mtime: taken as unchanged without reading the file. Another mtime alone
    # (touched, copied) is decided by the content.
    return current["mtime_ns"] == recorded["mtime_ns"] or _content_hash(Path(path)) == recorded["sha256"]


def _build_settings(modality: str, num_classes: int, raw_ignore_value: Optional[int]) -> Dict[str, Any]:
    """The settings, besides the source files, that the cached arrays depend on."""
    return {
        "modality": modality,
        "num_classes": num_classes,
        "raw_ignore_value": raw_ignore_value,
        "ct_window": list(CT_WINDOW),
        "mri_percentiles": list(MRI_PERCENTILES),
    }


def outdated_reason(case_dir: Path, job: Optional[PrepareJob] = None) -> Optional[str]:
    """Why the cached case cannot be used (None when it can): missing, another format version,
    or (given ``job``) built from other files or settings than ``job``'s."""
    meta_path = case_dir / META_NAME
    if not meta_path.is_file():
        return "not prepared"
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return f"unreadable {META_NAME}"
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format version {meta.get('format_version')}, not {FORMAT_VERSION}"
    if job is None:
        return None
    built = meta.get("built_from")
    if built is None:
        return "prepared before the cache recorded what it was built from"
    settings = _build_settings(job.modality, job.num_classes, job.raw_ignore_value)
    changed = sorted(key for key in settings if built["settings"].get(key) != settings[key])
    if changed:
        return "settings changed: " + ", ".join(f"{key} {built['settings'].get(key)!r} -> {settings[key]!r}" for key in changed)
    if not _unchanged(built["image"], job.image_file):
        return f"image file {job.image_file} changed"
    if not _unchanged(built["label"], job.label_file):
        return f"label file {job.label_file or '(none)'} changed"
    return None


def is_prepared(case_dir: Path, job: Optional[PrepareJob] = None) -> bool:
    """True when the case folder is complete, in the current format, and (if ``job`` is given)
    built from ``job``'s files and settings."""
    return outdated_reason(Path(case_dir), job) is None


def prepare_case(
    image_file: str,
    label_file: Optional[str],
    modality: str,
    num_classes: int,
    case_dir: os.PathLike,
    case_id: str,
    raw_ignore_value: Optional[int] = None,
) -> Path:
    """Read, validate, normalise and cache one volume; returns the case folder.

    ``raw_ignore_value`` is an nnU-Net "ignore" label of the raw data; it is stored as the cache's
    ignore value 255, which every loss and metric skips.

    Raises InputError (naming the file) for unreadable volumes, NaN/inf voxels, non-3D arrays,
    image/label shape or geometry mismatches and labels outside ``[0, num_classes)``.
    """
    if num_classes > 255:
        raise InputError(f"{case_id}: {num_classes} classes do not fit the uint8 label cache (255 is the ignore value)")
    case_dir = Path(case_dir)
    # Fingerprinted before reading: a file that changes meanwhile is seen as changed next time.
    built_from = {
        "image": _fingerprint(image_file),
        "label": _fingerprint(label_file),
        "settings": _build_settings(modality, num_classes, raw_ignore_value),
    }
    image = read_volume(image_file, dtype=np.float32)
    if str(modality).strip().upper() == "CT":
        warn_if_not_hounsfield(image)
    label = None
    if label_file:
        # With an ignore label, its value lies outside [0, num_classes): map it before checking.
        label = read_label_volume(label_file, reference=image, num_classes=None if raw_ignore_value is not None else num_classes)
        if raw_ignore_value is not None:
            array = label.array.astype(np.int64)
            array[array == raw_ignore_value] = IGNORE_VALUE
            bad = np.unique(array[(array >= num_classes) & (array != IGNORE_VALUE)])
            if bad.size:
                raise InputError(f"{label_file}: label values {bad[:10].tolist()} are outside the {num_classes} classes of the data set")
            label.array = array
    image_u8 = normalize_intensity(image.array, modality, name=str(image_file))

    slice_classes: List[List[int]] = []
    if label is not None:
        labels_u8 = label.array.astype(np.uint8)
        present = np.zeros((labels_u8.shape[0], num_classes), dtype=bool)
        for z in range(labels_u8.shape[0]):
            values = np.unique(labels_u8[z])
            present[z, values[values < num_classes]] = True
        slice_classes = [np.flatnonzero(row).tolist() for row in present]

    meta = {
        "format_version": FORMAT_VERSION,
        "case_id": case_id,
        "image_file": str(image_file),
        "label_file": str(label_file) if label_file else None,
        "modality": modality,
        "num_classes": num_classes,
        "shape": list(image_u8.shape),
        "spacing": list(image.spacing),
        "geometry": image.geometry.to_dict(),
        "slice_classes": slice_classes,
        "built_from": built_from,
    }
    with atomic_directory(case_dir) as tmp_dir:  # replaces an outdated version
        np.save(tmp_dir / "image.npy", image_u8)
        if label is not None:
            np.save(tmp_dir / "label.npy", labels_u8)
        (tmp_dir / META_NAME).write_text(json.dumps(meta))
    return case_dir


def _run_job(job: PrepareJob) -> Tuple[str, Optional[str]]:
    """Worker entry point: (case id, error message or None)."""
    try:
        prepare_case(job.image_file, job.label_file, job.modality, job.num_classes, job.case_dir, job.case_id, job.raw_ignore_value)
        return job.case_id, None
    except InputError as error:
        return job.case_id, str(error)
    except (OSError, MemoryError) as error:  # disk full, permissions: name the case and carry on
        return job.case_id, f"{job.image_file}: {type(error).__name__}: {error}"


@dataclass
class PrepareReport:
    prepared: List[str]
    skipped: List[str]
    failed: Dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.failed


def prepare_jobs(jobs: Sequence[PrepareJob], workers: int = 1, progress: bool = True) -> PrepareReport:
    """Run the jobs not already done, ``workers`` volumes in parallel, with a progress bar."""
    todo, skipped = [], []
    for job in jobs:
        reason = outdated_reason(Path(job.case_dir), job)
        if reason is None:
            skipped.append(job.case_id)
            continue
        if reason != "not prepared":
            logger.info("Prepare: the cached %s is out of date (%s); preparing it again", job.case_id, reason)
        todo.append(job)
    if skipped:
        logger.info("Prepare: %d of %d volumes already cached, skipped", len(skipped), len(jobs))
    prepared, failed = [], {}
    bar = tqdm(total=len(todo), desc="prepare", unit="vol", disable=not progress or not todo)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(todo) > 1 else None
    results: Iterable[Tuple[str, Optional[str]]] = pool.map(_run_job, todo) if pool else map(_run_job, todo)
    try:
        for case_id, error in results:
            if error:
                failed[case_id] = error
            else:
                prepared.append(case_id)
            bar.update()
    finally:
        if pool:
            pool.shutdown()
    bar.close()
    for case_id, error in failed.items():
        logger.error("Prepare failed for %s: %s", case_id, error)
    return PrepareReport(prepared, skipped, failed)


def jobs_for_dataset(dataset_name: str, cache_root: os.PathLike) -> List[PrepareJob]:
    """One job per volume of a registered data set."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    metadata = MetadataCatalog.get(dataset_name)
    return [
        PrepareJob(
            case_id=record["case_id"],
            image_file=str(record["image_file"]),
            label_file=str(record["label_file"]) if record.get("label_file") else None,
            modality=record["modality"],
            num_classes=metadata.num_classes,
            case_dir=str(case_cache_dir(cache_root, metadata.root, record["image_file"])),
            raw_ignore_value=metadata.get("raw_ignore_value", None),
        )
        for record in DatasetCatalog.get(dataset_name)
    ]


# ------------------------------------------------------------------ reading the cache
class PreparedVolume:
    """A cached volume, memory-mapped: slices are read from disk only when indexed."""

    def __init__(self, case_dir: os.PathLike):
        self.case_dir = Path(case_dir)
        if not is_prepared(self.case_dir):
            raise InputError(
                f"{self.case_dir} is not a prepared volume (no complete {META_NAME}); "
                "run `python datasets/prepare.py --config-file <config>` first"
            )
        self.meta = json.loads((self.case_dir / META_NAME).read_text())
        self.image = np.load(self.case_dir / "image.npy", mmap_mode="r")
        label_path = self.case_dir / "label.npy"
        self.label = np.load(label_path, mmap_mode="r") if label_path.is_file() else None

    @property
    def case_id(self) -> str:
        return self.meta["case_id"]

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    @property
    def spacing(self) -> Tuple[float, float, float]:
        return tuple(self.meta["spacing"])

    @property
    def geometry(self) -> VolumeGeometry:
        return VolumeGeometry.from_dict(self.meta["geometry"])

    @property
    def slice_classes(self) -> List[List[int]]:
        return self.meta["slice_classes"]
