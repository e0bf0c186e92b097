"""The prepare step: raw volumes -> a memory-mappable slice cache.

Decompressing a NIfTI per training sample is far too slow, so every volume is read once,
reoriented to the canonical (z, y, x) grid, intensity-normalised to uint8 (CT window / MRI
percentiles) and written as two ``.npy`` arrays that training memory-maps, plus ``meta.json``:

    <cache>/<data set folder name>/<image path inside it, without extension>/
        image.npy   uint8 (Z, Y, X)
        label.npy   uint8 (Z, Y, X)   (absent for unlabelled volumes)
        meta.json   spacing, geometry (to write back), modality, per-slice class presence, source

The step is resumable and atomic per volume: each case is written into a temporary folder that is
renamed into place when complete, so a case folder either is finished or does not exist. A case
whose folder exists with the current format version and an unchanged source file is skipped. Bad
volumes are reported (file and problem) without stopping the others.
"""
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from s2vnet.data.intensity import normalize_intensity
from s2vnet.data.volume_io import VolumeGeometry, read_label_volume, read_volume
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


def _source_signature(path: str) -> Dict[str, float]:
    stat = Path(path).stat() if Path(path).is_file() else None
    if stat is None:  # a DICOM folder: sum over its files
        files = [f for f in Path(path).iterdir() if f.is_file()]
        return {"size": float(sum(f.stat().st_size for f in files)), "mtime": max((f.stat().st_mtime for f in files), default=0.0)}
    return {"size": float(stat.st_size), "mtime": stat.st_mtime}


def is_prepared(case_dir: Path, image_file: Optional[str] = None) -> bool:
    """True when the case folder is complete, in the current format, and (if given) from this source."""
    meta_path = case_dir / META_NAME
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    if meta.get("format_version") != FORMAT_VERSION:
        return False
    if image_file is not None and Path(image_file).exists():
        return meta.get("source") == _source_signature(image_file)
    return True


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
    image = read_volume(image_file, dtype=np.float32)
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
        "source": _source_signature(image_file),
    }
    case_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{case_dir.name}.", dir=case_dir.parent))
    try:
        np.save(tmp_dir / "image.npy", image_u8)
        if label is not None:
            np.save(tmp_dir / "label.npy", labels_u8)
        (tmp_dir / META_NAME).write_text(json.dumps(meta))
        if case_dir.exists():  # an outdated version: replace it
            shutil.rmtree(case_dir)
        os.replace(tmp_dir, case_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return case_dir


@dataclass
class PrepareJob:
    case_id: str
    image_file: str
    label_file: Optional[str]
    modality: str
    num_classes: int
    case_dir: str
    raw_ignore_value: Optional[int] = None


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
    todo = [job for job in jobs if not is_prepared(Path(job.case_dir), job.image_file)]
    skipped = [job.case_id for job in jobs if job not in todo]
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
