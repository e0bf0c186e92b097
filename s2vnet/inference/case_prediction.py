"""Prediction of one case, as ``tools/predict.py`` runs it: read a volume, segment it automatically
or from its click rounds, and write the labels (and optionally the class probabilities) onto the
input's own grid, atomically.

::

    predictor = load_predictor(cfg)
    inputs = list_inputs(Path("cts/"))
    for case in plan_outputs(Path("cts/"), inputs, True, Path("segs/"), save_probabilities=False):
        predict_case(predictor, case.source, case.labels, "CT",
                     clicks=None, save_probabilities=False, class_names=predictor.description.class_names)

:func:`plan_outputs` names every output before any work and refuses outputs that would replace an
input, land in an input folder, collide with each other or cannot be written. The labels are a
volume file (``output_format="nifti"``, the default) or, for DICOM series inputs, a DICOM-SEG
object that references the series (``output_format="dicom-seg"``, :mod:`s2vnet.data.dicom_seg`).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from s2vnet.data.dicom_seg import DICOM_SEG_SUFFIX, check_segment_labels, instances_on_grid, read_dicom_series, write_dicom_seg
from s2vnet.data.intensity import normalize_intensity
from s2vnet.data.volume_io import Volume, read_volume, warn_if_not_hounsfield, write_label_volume, write_probability_volume
from s2vnet.inference.click_file import CaseClicks
from s2vnet.inference.session import InteractiveSession
from s2vnet.inference.volume_predictor import VolumePrediction, VolumePredictor
from s2vnet.utils.errors import InputError

__all__ = [
    "CaseOutputs",
    "LABEL_SUFFIXES",
    "NNUNET_CHANNEL_SUFFIX",
    "OUTPUT_FORMATS",
    "VOLUME_SUFFIXES",
    "case_name",
    "is_volume_folder",
    "list_inputs",
    "output_path_for",
    "plan_outputs",
    "predict_case",
    "probability_path_for",
    "segment_volume",
]

#: Volume file names an input folder is searched for (DICOM series are sub-folders).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
#: Formats a label output may have (those :func:`write_label_volume` writes).
LABEL_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
#: nnU-Net names the (single) channel of an image ``<case>_0000.nii.gz`` and its labels and
#: predictions ``<case>.nii.gz``; outputs drop the suffix so that they match the labels.
NNUNET_CHANNEL_SUFFIX = "_0000"
#: Label output formats and the file name ending of each (a folder run names outputs with it).
OUTPUT_FORMATS: Dict[str, str] = {"nifti": ".nii.gz", "dicom-seg": DICOM_SEG_SUFFIX}


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


def case_name(source: Path) -> str:
    """The name of an input's outputs: its file name without the volume suffix and without
    nnU-Net's channel suffix (``case_0000.nii.gz`` -> ``case``, ``ct.nii`` -> ``ct``)."""
    name = source.name
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(NNUNET_CHANNEL_SUFFIX) and len(name) > len(NNUNET_CHANNEL_SUFFIX):
        name = name[: -len(NNUNET_CHANNEL_SUFFIX)]
    return name


def output_path_for(source: Path, output: Path, many: bool, output_format: str = "nifti") -> Path:
    """Where the labels of ``source`` go: ``output`` itself for one output file, else (``many``:
    ``output`` is a folder) ``output/<case_name(source)>.nii.gz`` (``.dcm`` for DICOM-SEG)."""
    if not many:
        return output
    return output / f"{case_name(source)}{OUTPUT_FORMATS[output_format]}"


def probability_path_for(target: Path) -> Path:
    """The class-probability file beside the label file ``target``: ``<name>_probabilities.nii.gz``."""
    name = target.name[: -len(".nii.gz")] if target.name.endswith(".nii.gz") else target.stem
    return target.with_name(f"{name}_probabilities.nii.gz")


@dataclass(frozen=True)
class CaseOutputs:
    """The files one input is asked to write: its labels and, if asked, its class probabilities."""

    source: Path
    labels: Path
    probabilities: Optional[Path] = None

    @property
    def files(self) -> Tuple[Path, ...]:
        return (self.labels,) if self.probabilities is None else (self.labels, self.probabilities)

    def done(self) -> bool:
        """Whether every file asked for exists, so that a re-run may skip the case."""
        return all(path.is_file() for path in self.files)


def plan_outputs(
    input_path: Path, inputs: Sequence[Path], many: bool, output: Path, save_probabilities: bool, output_format: str = "nifti"
) -> List[CaseOutputs]:
    """The outputs of every input, checked before any work.

    ``--output`` is a folder for a folder of volumes (``many``) and for one input when it is an
    existing folder (the output is then named as in a folder run); otherwise it is the output file.
    ``output_format`` is one of :data:`OUTPUT_FORMATS`; ``"dicom-seg"`` needs DICOM series inputs.

    Raises:
        InputError: an output that would replace an input or be written inside an input folder,
            two outputs with one name, an output file of an unsupported format, an output
            folder that is a file or not writable, or a DICOM-SEG asked for an input that is
            not a DICOM series.
    """
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"output format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    if output_format == "dicom-seg":
        _check_dicom_inputs(inputs)
    into_folder = many or output.is_dir()
    if many:
        _check_output_folder(output, input_path)
    else:
        _check_single_output(output, into_folder, input_path, output_format)
    cases = []
    for source in inputs:
        labels = output_path_for(source, output, into_folder, output_format)
        cases.append(CaseOutputs(source, labels, probability_path_for(labels) if save_probabilities else None))
    _check_inputs_are_kept(cases, inputs)
    _check_no_collisions(cases)
    for folder in sorted({path.parent for case in cases for path in case.files}):
        _check_writable_folder(folder)
    return cases


def _check_output_folder(output: Path, input_folder: Path) -> None:
    """The output folder of a folder run: not a file, and outside the input folder (where outputs
    could replace inputs and would be taken for inputs by a re-run)."""
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file, but --input {input_folder} is a folder of volumes: give an output folder")
    if output.name.lower().endswith(LABEL_SUFFIXES + (DICOM_SEG_SUFFIX,)):
        raise InputError(f"--output {output} looks like a file, but --input {input_folder} is a folder of volumes")
    if _is_within(output, input_folder):
        raise InputError(
            f"--output {output} is the input folder {input_folder} or inside it: outputs could replace inputs "
            "and a re-run would read them as inputs; give a folder outside it"
        )


def _check_single_output(output: Path, into_folder: bool, source: Path, output_format: str) -> None:
    """The output (file or folder) of one input: a file of a format we write (``.dcm`` for a
    DICOM-SEG), and not inside the input when that is a DICOM folder."""
    suffixes = (DICOM_SEG_SUFFIX,) if output_format == "dicom-seg" else LABEL_SUFFIXES
    if not into_folder and not output.name.lower().endswith(suffixes):
        raise InputError(
            f"--output {output}: unsupported output format{' for a DICOM-SEG' if output_format == 'dicom-seg' else ''}; "
            f"use one of {', '.join(suffixes)} (or an existing folder)"
        )
    if source.is_dir() and _is_within(output, source):
        raise InputError(f"--output {output} lies inside the DICOM series folder {source}: give an output outside it")


def _check_dicom_inputs(inputs: Sequence[Path]) -> None:
    """A DICOM-SEG references a DICOM series: every input must be a series folder."""
    for source in inputs:
        if not source.is_dir():
            raise InputError(
                f"--output-format dicom-seg: the input {source} is not a DICOM series (a folder of DICOM files), and a "
                "DICOM-SEG references the series it segments; use --output-format nifti for volume files"
            )


def _is_within(path: Path, folder: Path) -> bool:
    resolved, container = path.resolve(), folder.resolve()
    return resolved == container or container in resolved.parents


def _check_inputs_are_kept(cases: Sequence[CaseOutputs], inputs: Sequence[Path]) -> None:
    """No output is an input, under any name: a symbolic or hard link included, as the device
    and inode are compared (what ``os.path.samefile`` does, here once per file)."""
    input_files = {}
    for source in inputs:
        stat = source.stat()
        input_files[(stat.st_dev, stat.st_ino)] = source
    for case in cases:
        for path in case.files:
            if path.exists():
                stat = path.stat()
                source = input_files.get((stat.st_dev, stat.st_ino))
                if source is not None:
                    raise InputError(f"--output {path} is the input {source}: an output never replaces an input; choose another --output")


def _check_no_collisions(cases: Sequence[CaseOutputs]) -> None:
    """No two outputs share a file (e.g. the inputs ``case.nii`` and ``case.nii.gz``)."""
    writers: Dict[Path, str] = {}
    for case in cases:
        for path, what in zip(case.files, ("labels", "probabilities")):
            writer = f"the {what} of {case.source}"
            other = writers.setdefault(path.resolve(), writer)
            if other != writer:
                raise InputError(
                    f"{other} and {writer} would both be written to {path}: rename one of the inputs "
                    f"(outputs are named after the input without its volume suffix and nnU-Net's {NNUNET_CHANNEL_SUFFIX})"
                )


def _check_writable_folder(folder: Path) -> None:
    """``folder`` exists and is writable, or can be made: its nearest existing ancestor is a writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write to {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {folder}: {existing} is not writable")


def segment_volume(
    predictor: VolumePredictor,
    volume: Volume,
    modality: str,
    clicks: Optional[CaseClicks],
    class_names: Sequence[str],
    with_probabilities: bool,
) -> VolumePrediction:
    """Labels (and, if asked, class probabilities) of ``volume``: the automatic prediction, or an
    interactive session given the click rounds one after the other (each round in one pass).
    Clicks outside the volume are refused before it is encoded."""
    if clicks is not None and clicks.rounds:
        clicks.check_inside(volume.geometry.shape, volume.path)
        session = InteractiveSession(predictor, volume, modality=modality, class_names=class_names)
        for round_clicks in clicks.rounds:
            for click in round_clicks:
                session.click_voxel(*click.ijk, click.class_id)
            session.run()
        labels = session.result().labels
        probabilities = session.fused_probabilities() if with_probabilities else None
        return VolumePrediction(labels=labels, scores=probabilities)
    if modality == "CT":
        warn_if_not_hounsfield(volume)
    return predictor.predict_automatic(normalize_intensity(volume.array, modality, volume.path), return_scores=with_probabilities)


def predict_case(
    predictor: VolumePredictor,
    source: Path,
    target: Path,
    modality: str,
    clicks: Optional[CaseClicks],
    save_probabilities: bool,
    class_names: Sequence[str],
    output_format: str = "nifti",
    keep_empty_segments: bool = False,
) -> None:
    """Read ``source``, segment it (:func:`segment_volume`) and write the labels to ``target`` on
    the input's grid; with ``save_probabilities`` also :func:`probability_path_for` ``target``.
    Both are written atomically, the labels last; a case is finished when every file it was asked
    for exists (:meth:`CaseOutputs.done`).

    With ``output_format="dicom-seg"`` the labels are a DICOM-SEG of the input series
    (:func:`~s2vnet.data.dicom_seg.write_dicom_seg`; ``keep_empty_segments`` keeps the classes
    not found); the series is checked to be one a DICOM-SEG can reference, and to be the volume
    read from it, before the model runs."""
    series = None
    if output_format == "dicom-seg":
        check_segment_labels(class_names)
        series = read_dicom_series(source)
    volume = read_volume(source)
    if series is not None:
        instances_on_grid(series, volume.geometry)
    prediction = segment_volume(predictor, volume, modality, clicks, class_names, save_probabilities)
    if prediction.scores is not None:
        write_probability_volume(prediction.scores.astype(np.float32), volume.geometry, probability_path_for(target))
    if series is None:
        write_label_volume(prediction.labels, volume.geometry, target)
        return
    interactive = clicks is not None and bool(clicks.rounds)
    write_dicom_seg(prediction.labels, series, class_names, target, volume.geometry,
                    keep_empty_segments=keep_empty_segments, interactive=interactive)
