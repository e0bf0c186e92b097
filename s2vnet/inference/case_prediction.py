"""Prediction of one case, as ``tools/predict.py`` runs it: read a volume, segment it automatically
or from its click rounds, and write the labels (and optionally the class probabilities) onto the
input's own grid, atomically.

::

    predictor = load_predictor(cfg)
    for source in list_inputs(Path("cts/")):
        predict_case(predictor, source, output_path_for(source, Path("segs/"), many=True), "CT",
                     clicks=None, save_probabilities=False, class_names=predictor.description.class_names)
"""
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from s2vnet.data.intensity import normalize_intensity
from s2vnet.data.volume_io import Volume, read_volume, write_label_volume, write_probability_volume
from s2vnet.inference.click_file import CaseClicks
from s2vnet.inference.session import InteractiveSession
from s2vnet.inference.volume_predictor import VolumePrediction, VolumePredictor
from s2vnet.utils.errors import InputError

__all__ = [
    "VOLUME_SUFFIXES",
    "is_volume_folder",
    "list_inputs",
    "output_path_for",
    "predict_case",
    "probability_path_for",
    "segment_volume",
]

#: Volume file names an input folder is searched for (DICOM series are sub-folders).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def list_inputs(path: Path, name: Optional[str] = None) -> List[Path]:
    """One volume (file or DICOM folder), or every volume in a folder.

    ``name`` is how a missing path is named in the error (default: the path itself).
    """
    if not path.exists():
        raise InputError(f"{name or path} does not exist")
    if path.is_file():
        return [path]
    entries = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(VOLUME_SUFFIXES))
    entries += sorted(p for p in path.iterdir() if p.is_dir())  # DICOM series, one per sub-folder
    if entries:
        return entries
    return [path]  # the folder itself is a DICOM series (read_volume says so if it is not)


def is_volume_folder(path: Path, inputs: Sequence[Path]) -> bool:
    """Whether ``path`` (with ``inputs = list_inputs(path)``) is a folder of volumes rather than
    one volume: then outputs go to a folder, named by :func:`output_path_for`."""
    return path.is_dir() and not (len(inputs) == 1 and inputs[0] == path)


def output_path_for(source: Path, output: Path, many: bool) -> Path:
    """Where the labels of ``source`` go: ``output`` itself for one input, else
    ``output/<source name without its volume suffix>.nii.gz``."""
    if not many:
        return output
    name = source.name
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output / f"{name}.nii.gz"


def probability_path_for(target: Path) -> Path:
    """The class-probability file beside the label file ``target``: ``<name>_probabilities.nii.gz``."""
    name = target.name[: -len(".nii.gz")] if target.name.endswith(".nii.gz") else target.stem
    return target.with_name(f"{name}_probabilities.nii.gz")


def segment_volume(
    predictor: VolumePredictor,
    volume: Volume,
    modality: str,
    clicks: Optional[CaseClicks],
    class_names: Sequence[str],
    with_probabilities: bool,
) -> VolumePrediction:
    """Labels (and, if asked, class probabilities) of ``volume``: the automatic prediction, or an
    interactive session given the click rounds one after the other (each round in one pass)."""
    if clicks is not None and clicks.rounds:
        session = InteractiveSession(predictor, volume, modality=modality, class_names=class_names)
        for round_clicks in clicks.rounds:
            for click in round_clicks:
                session.click_voxel(*click.ijk, click.class_id)
            session.run()
        labels = session.result().labels
        probabilities = session.fused_probabilities() if with_probabilities else None
        return VolumePrediction(labels=labels, scores=probabilities)
    return predictor.predict_automatic(normalize_intensity(volume.array, modality, volume.path), return_scores=with_probabilities)


def predict_case(
    predictor: VolumePredictor,
    source: Path,
    target: Path,
    modality: str,
    clicks: Optional[CaseClicks],
    save_probabilities: bool,
    class_names: Sequence[str],
) -> None:
    """Read ``source``, segment it (:func:`segment_volume`) and write the labels to ``target`` on
    the input's grid; with ``save_probabilities`` also :func:`probability_path_for` ``target``.
    Both are written atomically, the labels last (so existing labels mean a finished case)."""
    volume = read_volume(source)
    prediction = segment_volume(predictor, volume, modality, clicks, class_names, save_probabilities)
    if prediction.scores is not None:
        write_probability_volume(prediction.scores.astype(np.float32), volume.geometry, probability_path_for(target))
    write_label_volume(prediction.labels, volume.geometry, target)
