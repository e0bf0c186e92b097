"""Volume evaluation: automatic and interactive, per volume and class (docs/evaluation.md).

Model mode (:func:`evaluate_datasets`, :func:`evaluate_dataset`): every volume of a registered
split is segmented automatically and then refined over ``settings.rounds`` simulated click rounds
(the protocol of §3.3: first click at the deepest point of each class's largest cross-section, then
one corrective click per class at the deepest point of its largest error region, labelled with the
true label there: the class on a false negative, background or the organ really there on a false
positive). Volumes are spread over the distributed ranks; each finished volume's rows are written
to ``cases/<case>.json`` at once, so a killed run re-run with the same arguments skips them. A case
file is reused only while everything its rows depend on is unchanged: the weights' content, the
inference config, the evaluation settings, the S2VNet version and the prepared volume.

Folder mode (:func:`evaluate_folders`): any folder of segmentations against ground truth.

With ``settings.diagnostics`` the analyses of :mod:`s2vnet.evaluation.diagnostics` run too (click
records, error regions, round changes, the boundary-band DSC); without, none of them is computed.

Metrics are computed on the canonical (z, y, x) array with its spacing: it is the original voxel
grid up to a permutation and flips of the axes (nothing is resampled), under which DSC, HD95 and
NSD are unchanged, so the numbers equal those on the file's own grid.
"""
import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from s2vnet.data.clicks import corrective_clicks, initial_clicks
from s2vnet.evaluation.diagnostics.boundary_band import BAND_METRIC, band_dsc
from s2vnet.evaluation.diagnostics.clicks import ClickRecorder
from s2vnet.evaluation.diagnostics.report import report_additions
from s2vnet.evaluation.metrics import score_case
from s2vnet.evaluation.reports import METRICS, EvaluationRows, json_safe, write_reports
from s2vnet.evaluation.settings import EvaluationSettings
from s2vnet.utils.atomic import write_json_atomic
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)


def score_rows(case: str, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], settings: EvaluationSettings, **extra) -> List[Dict]:
    """Rows of one case (and round) for every class in ``settings.class_ids``, each ending with ``extra``.

    Voxels the ground truth marks ``settings.ignore_label`` (unannotated: nnU-Net's "ignore" label,
    255 once prepared) count for nothing: both sides are background there, as nnU-Net's own
    evaluation leaves them out of every count. With diagnostics, each row also holds ``band_dsc``
    (:func:`s2vnet.evaluation.diagnostics.boundary_band.band_dsc`, ``settings.band_width`` pixels).
    """
    if settings.ignore_label is not None:
        unannotated = gt == settings.ignore_label
        if unannotated.any():
            pred, gt = np.where(unannotated, 0, pred), np.where(unannotated, 0, gt)
    class_ids = settings.class_ids
    scores = score_case(pred, gt, spacing, class_ids, nsd_tolerance_mm=settings.nsd_tolerance_mm, protocol=settings.protocol)
    band = band_dsc(pred, gt, class_ids, width=settings.band_width, protocol=settings.protocol) if settings.diagnostics else None
    return [
        {
            "case": case, "class_id": int(c), "class_name": settings.class_names[c], "dsc": s.dsc, "hd95": s.hd95, "nsd": s.nsd,
            **({BAND_METRIC: band[c]} if band is not None else {}),
            **extra,
        }
        for c, s in scores.items()
    ]


def evaluate_volume(
    predictor, case: str, image: np.ndarray, gt: np.ndarray, spacing: Sequence[float], settings: EvaluationSettings
) -> EvaluationRows:
    """Automatic rows and, with ``settings.rounds`` > 0, interactive rows for rounds 0..rounds of
    one volume. With diagnostics, also a record of what each click did and the voxels each round
    fixed and broke (:class:`s2vnet.evaluation.diagnostics.clicks.ClickRecorder`). Voxels labelled
    ``settings.ignore_label`` are never clicked and not scored (:func:`score_rows`)."""
    from s2vnet.inference.session import InteractiveSession  # inference builds on the model

    recorder = ClickRecorder(case, settings.class_names, gt) if settings.diagnostics else None

    def rows(automatic: List[Dict], interactive: List[Dict]) -> EvaluationRows:
        if recorder is None:
            return EvaluationRows(automatic, interactive)
        return EvaluationRows(automatic, interactive, recorder.records, recorder.round_changes)

    if settings.rounds == 0:
        labels = predictor.predict_automatic(image).labels
        return rows(score_rows(case, labels, gt, spacing, settings, mode="automatic"), [])
    session = InteractiveSession(predictor, image)
    current = session.result().labels  # the automatic prediction, from the same features
    automatic = score_rows(case, current, gt, spacing, settings, mode="automatic")
    interactive = [dict(row, mode="interactive", round=0) for row in automatic]
    for round_index in range(1, settings.rounds + 1):
        if round_index == 1:
            clicks = initial_clicks(gt, settings.class_ids, spacing=spacing, ignore_label=settings.ignore_label)
        else:
            clicks = corrective_clicks(gt, current, settings.class_ids, spacing=spacing, ignore_label=settings.ignore_label)
        if not clicks:  # nothing left to correct: later rounds equal this one
            interactive += [dict(row, round=round_index) for row in interactive if row["round"] == round_index - 1]
            continue
        if recorder is not None:
            recorder.before_round(session, clicks)
        for click in clicks:
            session.click(click.z, click.y, click.x, click.label)
        previous, current = current, session.run().labels
        if recorder is not None:
            recorder.after_round(session, round_index, clicks, previous, current)
        interactive += score_rows(case, current, gt, spacing, settings, mode="interactive", round=round_index)
    return rows(automatic, interactive)


def _row_metrics(settings: EvaluationSettings) -> Tuple[str, ...]:
    """The float values of every row: the metrics, and the band DSC with diagnostics."""
    return METRICS + ((BAND_METRIC,) if settings.diagnostics else ())


def model_sha256(model) -> str:
    """SHA-256 of the weights a model holds (every parameter and buffer, with its name, dtype and
    shape): what the weights file loaded into it contained, or what training made of it."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        # As bytes, so that every dtype (bfloat16 included) hashes alike.
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def inference_config_sha256(cfg) -> str:
    """SHA-256 of the config sections that shape predictions and scores (MODEL, INPUT, TEST).

    ``MODEL.WEIGHTS`` is left out: the weights count by content (:func:`model_sha256`), so a
    checkpoint moved elsewhere still matches and one overwritten in place does not."""
    from detectron2.config import CfgNode

    sections = CfgNode({key: cfg[key].clone() for key in ("MODEL", "INPUT", "TEST")})
    sections.defrost()
    sections.MODEL.WEIGHTS = ""
    return hashlib.sha256(sections.dump().encode()).hexdigest()


def folder_sha256(folder: Path) -> str:
    """SHA-256 of the names and contents of the files in ``folder`` (a prepared volume's image,
    labels and metadata)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(f"{path.name};".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_output_folder(path: Path) -> None:
    """Refuse a report folder that cannot be written, before anything is evaluated.

    Raises:
        InputError: ``path`` (or a folder above it) is a file, or the folder it would be written
            in is not writable.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise InputError(f"output folder {path} {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (in {existing})"
        raise InputError(f"output folder {path} is not writable{where}")


def _case_record(cfg, model, dataset_name: str, settings: EvaluationSettings) -> Dict:
    """What a case file's rows depend on: a finished case file is reused only when its record is
    equal (and its volume unchanged, :func:`evaluate_dataset`). The readable entries are listed in
    the report; the hashes stand for the weights' content, the whole inference config, every
    evaluation setting and the code that wrote the record."""
    import s2vnet

    record = {
        "dataset": dataset_name,
        "weights": cfg.MODEL.WEIGHTS,
        "rounds": settings.rounds,
        "nsd_tolerance_mm": settings.nsd_tolerance_mm,
        "protocol": settings.protocol,
        "propagation": cfg.MODEL.S2VNET.PROPAGATION.ENABLED,
        "aggregation": cfg.MODEL.S2VNET.AGGREGATION.ENABLED,
        "adaptive_sampling": cfg.MODEL.S2VNET.INTERACTION.ADAPTIVE_SAMPLING,
        "beta": cfg.MODEL.S2VNET.INTERACTION.BETA,
    }
    if settings.diagnostics:
        record["boundary_band_pixels"] = settings.band_width
    record["ignore_label"] = settings.ignore_label  # unannotated voxels: never clicked, not scored
    record["diagnostics"] = settings.diagnostics
    record["model_sha256"] = model_sha256(model)
    record["config_sha256"] = inference_config_sha256(cfg)
    record["settings_sha256"] = settings.fingerprint()
    record["s2vnet_version"] = s2vnet.__version__
    return record


#: Record entries listed for the reader only: the weights count by content (``model_sha256``), not by path.
_NOT_COMPARED = ("weights",)


def _stale_entries(result_path: Path, record: Dict, volume_sha256: str) -> Optional[List[str]]:
    """The entries in which a case file differs from this evaluation: [] = reusable as it is,
    None = no finished case file."""
    if not result_path.is_file():
        return None
    try:
        saved = json.loads(result_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ["unreadable case file"]  # written outside S2VNet: evaluate again
    saved_record = saved.get("settings") if isinstance(saved, dict) else None
    if not isinstance(saved_record, dict):
        return ["settings"]
    stale = [key for key in record if key not in _NOT_COMPARED and saved_record.get(key) != record[key]]
    if saved.get("volume_sha256") != volume_sha256:
        stale.append("volume_sha256")
    return stale


def evaluate_dataset(cfg, predictor, dataset_name: str, output_dir: Path, settings: EvaluationSettings, progress: bool = True) -> Dict:
    """Evaluate one registered split with ``settings`` (:meth:`EvaluationSettings.from_config`);
    returns the results dict (also written to ``output_dir``; empty on ranks other than the main one).

    A case file of an earlier run is reused only if the model's weights, the inference config, the
    evaluation settings, the S2VNet version and the prepared volume are all the same
    (:func:`_case_record`); the log says how many cases were reused and how many evaluated."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils import comm

    from s2vnet.data.prepare import PreparedVolume, case_cache_dir

    output_dir = Path(output_dir)
    check_output_folder(output_dir)
    metadata = MetadataCatalog.get(dataset_name)
    record = _case_record(cfg, predictor.model, dataset_name, settings)
    case_dir = output_dir / "cases"
    volumes = DatasetCatalog.get(dataset_name)
    mine = volumes[comm.get_rank() :: comm.get_world_size()]
    reused, evaluated, stale_keys = 0, 0, set()
    for volume_record in tqdm(mine, desc=f"eval {dataset_name}", unit="vol", disable=not progress or not comm.is_main_process()):
        result_path = case_dir / f"{volume_record['case_id']}.json"
        volume = PreparedVolume(case_cache_dir(cfg.DATASETS.CACHE_DIR, metadata.root, volume_record["image_file"]))
        volume_sha256 = folder_sha256(volume.case_dir)
        stale = _stale_entries(result_path, record, volume_sha256)
        if stale == []:
            reused += 1  # finished by an earlier (interrupted) run with the same model, config and settings
            continue
        stale_keys.update(stale or ())
        if volume.label is None:
            raise InputError(f"{volume_record['case_id']}: evaluation needs ground-truth labels, but {volume_record['image_file']} has none")
        rows = evaluate_volume(predictor, volume_record["case_id"], np.asarray(volume.image), np.asarray(volume.label), volume.spacing, settings)
        write_json_atomic(result_path, json_safe({"settings": record, "volume_sha256": volume_sha256, **rows.to_json()}))
        evaluated += 1
    counts = comm.all_gather((reused, evaluated, sorted(stale_keys)))
    if not comm.is_main_process():
        return {}
    _log_reuse(dataset_name, case_dir, counts)
    merged = EvaluationRows()
    for volume_record in volumes:
        data = json.loads((case_dir / f"{volume_record['case_id']}.json").read_text())
        merged.extend(EvaluationRows.from_json(data, _row_metrics(settings)))
    additions = report_additions(merged, settings) if settings.diagnostics else None
    return write_reports(output_dir, merged, settings, record, additions)


def _log_reuse(dataset_name: str, case_dir: Path, counts: Sequence[Tuple[int, int, List[str]]]) -> None:
    """Say how many cases every rank reused and evaluated, and why earlier case files were not reused."""
    reused = sum(c[0] for c in counts)
    evaluated = sum(c[1] for c in counts)
    stale = sorted({key for c in counts for key in c[2]})
    logger.info("%s: %d case(s) reused from %s (same weights, config, settings and volume), %d evaluated", dataset_name, reused, case_dir, evaluated)
    if stale:
        logger.info("%s: earlier case files were evaluated again because these differ: %s", dataset_name, ", ".join(stale))


def evaluate_datasets(cfg, model, dataset_names: Sequence[str], output_dir, interactive_rounds: int = 0) -> Dict[str, Dict]:
    """Evaluate several splits with one model, without diagnostics; returns {dataset: overall automatic means}."""
    from s2vnet.inference.volume_predictor import VolumePredictor

    predictor = VolumePredictor.from_config(cfg, model)
    summary = {}
    for name in dataset_names:
        settings = EvaluationSettings.from_config(cfg, name, rounds=interactive_rounds)
        results = evaluate_dataset(cfg, predictor, name, Path(output_dir) / name, settings)
        if results:
            overall = results["automatic"]["overall"]
            summary[name] = {k: overall[k] for k in ("dsc", "hd95", "nsd") if overall.get(k) is not None}
            logger.info("%s: automatic mean DSC %s, HD95 %s mm, NSD %s", name, overall.get("dsc"), overall.get("hd95"), overall.get("nsd"))
    return summary


#: Label files folder mode reads; a case is named by its file name without this suffix.
FOLDER_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


def case_name(file_name: str) -> str:
    """The case a label file holds: its name without the volume suffix (``case.a.nii.gz`` -> ``case.a``)."""
    for suffix in FOLDER_SUFFIXES:
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name


def _ground_truth_files(gt_dir: Path) -> List[Path]:
    """The label files of ``gt_dir``, one per case.

    Raises:
        InputError: no label file, or two files of the same case (``case.nii`` and ``case.nii.gz``).
    """
    gt_files = sorted(p for p in gt_dir.iterdir() if p.name.endswith(FOLDER_SUFFIXES))
    if not gt_files:
        raise InputError(f"ground-truth folder {gt_dir} holds no .nii.gz/.nii/.mha/.nrrd files")
    by_case: Dict[str, List[str]] = {}
    for path in gt_files:
        by_case.setdefault(case_name(path.name), []).append(path.name)
    clashes = {case: names for case, names in by_case.items() if len(names) > 1}
    if clashes:
        case, names = next(iter(clashes.items()))
        raise InputError(
            f"ground-truth folder {gt_dir}: {len(clashes)} case(s) have more than one label file, e.g. {names} are both case '{case}'; keep one"
        )
    return gt_files


def evaluate_folders(pred_dir: Path, gt_dir: Path, output_dir: Path, settings: Optional[EvaluationSettings] = None, progress: bool = True) -> Dict:
    """Score every ground-truth file in ``gt_dir`` against the same-named file in ``pred_dir``.

    Spacing comes from the ground truth; the prediction must lie on the same grid. Classes are
    ``settings.class_names`` (index = label) if given (:meth:`EvaluationSettings.for_folders`),
    else every non-zero label found in either file. Ground-truth voxels of ``settings.ignore_label``
    are not scored. Folder mode has no click rounds.
    """
    from s2vnet.data.volume_io import read_label_volume

    settings = settings or EvaluationSettings.for_folders()
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    check_output_folder(output_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not folder.is_dir():
            raise InputError(f"{what} folder {folder} does not exist")
    gt_files = _ground_truth_files(gt_dir)
    missing = [p.name for p in gt_files if not (pred_dir / p.name).is_file()]
    if missing:
        raise InputError(f"{len(missing)} ground-truth file(s) have no prediction of the same name in {pred_dir}, e.g. {missing[:3]}")
    class_names, ignore = settings.class_names, settings.ignore_label
    num_classes = len(class_names) if class_names else None
    # The ground truth may also hold the ignore label (nnU-Net gives it the largest value).
    gt_limit = max(num_classes, ignore + 1) if num_classes and ignore is not None else num_classes
    rows = []
    found_classes = set()
    for gt_path in tqdm(gt_files, desc="score", unit="vol", disable=not progress):
        gt = read_label_volume(gt_path, num_classes=gt_limit)
        pred = read_label_volume(pred_dir / gt_path.name, reference=gt, num_classes=num_classes)
        # Without a class list, score every label in either file (a class only predicted scores DSC 0).
        ids = range(1, len(class_names)) if class_names else sorted((set(np.unique(gt.array).tolist()) | set(np.unique(pred.array).tolist())) - {0, ignore})
        found_classes.update(ids)
        names = class_names or tuple(str(i) for i in range(max(ids, default=0) + 1))
        case_settings = replace(settings, class_ids=tuple(ids), class_names=names)
        rows += score_rows(case_name(gt_path.name), pred.array, gt.array, gt.spacing, case_settings, mode="automatic")
    class_ids = tuple(sorted(found_classes))
    names = class_names or tuple(str(i) for i in range(max(class_ids, default=0) + 1))
    report_settings = replace(settings, class_ids=class_ids, class_names=names, abbrevs=names)
    record = {"pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "nsd_tolerance_mm": settings.nsd_tolerance_mm, "protocol": settings.protocol}
    if settings.diagnostics:
        record["boundary_band_pixels"] = settings.band_width
    if ignore is not None:
        record["ignore_label"] = ignore
    evaluated = EvaluationRows(automatic=rows)
    additions = report_additions(evaluated, report_settings) if settings.diagnostics else None
    return write_reports(Path(output_dir), evaluated, report_settings, record, additions)
