"""Volume evaluation: automatic and interactive, per volume and class (docs/evaluation.md).

Model mode (:func:`evaluate_datasets`, :func:`evaluate_dataset`): every volume of a registered
split is segmented automatically and then refined over ``settings.rounds`` simulated click rounds
(the protocol of §3.3: first click at the deepest point of each class's largest cross-section, then
one corrective click per class at the deepest point of its largest error region, labelled with the
true label there: the class on a false negative, background or the organ really there on a false
positive). Volumes are spread over the distributed ranks; each finished volume's rows are written
to ``cases/<case>.json`` at once, so a killed run re-run with the same arguments skips them.

Folder mode (:func:`evaluate_folders`): any folder of segmentations against ground truth.

With ``settings.diagnostics`` the analyses of :mod:`s2vnet.evaluation.diagnostics` run too (click
records, error regions, round changes, the boundary-band DSC); without, none of them is computed.

Metrics are computed on the canonical (z, y, x) array with its spacing: it is the original voxel
grid up to a permutation and flips of the axes (nothing is resampled), under which DSC, HD95 and
NSD are unchanged, so the numbers equal those on the file's own grid.
"""
import json
import logging
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


def _case_record(cfg, dataset_name: str, settings: EvaluationSettings) -> Dict:
    """The settings a case file was evaluated with: a finished case file is reused only when they are equal."""
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
    return record


def evaluate_dataset(cfg, predictor, dataset_name: str, output_dir: Path, settings: EvaluationSettings, progress: bool = True) -> Dict:
    """Evaluate one registered split with ``settings`` (:meth:`EvaluationSettings.from_config`);
    returns the results dict (also written to ``output_dir``; empty on ranks other than the main one)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils import comm

    from s2vnet.data.prepare import PreparedVolume, case_cache_dir

    metadata = MetadataCatalog.get(dataset_name)
    record = _case_record(cfg, dataset_name, settings)
    output_dir = Path(output_dir)
    case_dir = output_dir / "cases"
    volumes = DatasetCatalog.get(dataset_name)
    mine = volumes[comm.get_rank() :: comm.get_world_size()]
    for volume_record in tqdm(mine, desc=f"eval {dataset_name}", unit="vol", disable=not progress or not comm.is_main_process()):
        result_path = case_dir / f"{volume_record['case_id']}.json"
        if result_path.is_file() and json.loads(result_path.read_text()).get("settings") == record:
            continue  # finished by an earlier (interrupted) run with the same settings
        volume = PreparedVolume(case_cache_dir(cfg.DATASETS.CACHE_DIR, metadata.root, volume_record["image_file"]))
        if volume.label is None:
            raise InputError(f"{volume_record['case_id']}: evaluation needs ground-truth labels, but {volume_record['image_file']} has none")
        rows = evaluate_volume(predictor, volume_record["case_id"], np.asarray(volume.image), np.asarray(volume.label), volume.spacing, settings)
        write_json_atomic(result_path, json_safe({"settings": record, **rows.to_json()}))
    comm.synchronize()
    if not comm.is_main_process():
        return {}
    merged = EvaluationRows()
    for volume_record in volumes:
        data = json.loads((case_dir / f"{volume_record['case_id']}.json").read_text())
        merged.extend(EvaluationRows.from_json(data, _row_metrics(settings)))
    additions = report_additions(merged, settings) if settings.diagnostics else None
    return write_reports(output_dir, merged, settings, record, additions)


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


def evaluate_folders(pred_dir: Path, gt_dir: Path, output_dir: Path, settings: Optional[EvaluationSettings] = None, progress: bool = True) -> Dict:
    """Score every ground-truth file in ``gt_dir`` against the same-named file in ``pred_dir``.

    Spacing comes from the ground truth; the prediction must lie on the same grid. Classes are
    ``settings.class_names`` (index = label) if given (:meth:`EvaluationSettings.for_folders`),
    else every non-zero label found in either file. Folder mode has no click rounds.
    """
    from s2vnet.data.volume_io import read_label_volume

    settings = settings or EvaluationSettings.for_folders()
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not folder.is_dir():
            raise InputError(f"{what} folder {folder} does not exist")
    suffixes = (".nii.gz", ".nii", ".mha", ".nrrd")
    gt_files = sorted(p for p in gt_dir.iterdir() if p.name.endswith(suffixes))
    if not gt_files:
        raise InputError(f"ground-truth folder {gt_dir} holds no .nii.gz/.nii/.mha/.nrrd files")
    missing = [p.name for p in gt_files if not (pred_dir / p.name).is_file()]
    if missing:
        raise InputError(f"{len(missing)} ground-truth file(s) have no prediction of the same name in {pred_dir}, e.g. {missing[:3]}")
    class_names = settings.class_names
    rows = []
    found_classes = set()
    for gt_path in tqdm(gt_files, desc="score", unit="vol", disable=not progress):
        num_classes = len(class_names) if class_names else None
        gt = read_label_volume(gt_path, num_classes=num_classes)
        pred = read_label_volume(pred_dir / gt_path.name, reference=gt, num_classes=num_classes)
        # Without a class list, score every label in either file (a class only predicted scores DSC 0).
        ids = range(1, len(class_names)) if class_names else sorted((set(np.unique(gt.array).tolist()) | set(np.unique(pred.array).tolist())) - {0})
        found_classes.update(ids)
        names = class_names or tuple(str(i) for i in range(max(ids, default=0) + 1))
        case = gt_path.name.split(".")[0]
        rows += score_rows(case, pred.array, gt.array, gt.spacing, replace(settings, class_ids=tuple(ids), class_names=names), mode="automatic")
    class_ids = tuple(sorted(found_classes))
    names = class_names or tuple(str(i) for i in range(max(class_ids, default=0) + 1))
    report_settings = replace(settings, class_ids=class_ids, class_names=names, abbrevs=names)
    record = {"pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "nsd_tolerance_mm": settings.nsd_tolerance_mm, "protocol": settings.protocol}
    if settings.diagnostics:
        record["boundary_band_pixels"] = settings.band_width
    evaluated = EvaluationRows(automatic=rows)
    additions = report_additions(evaluated, report_settings) if settings.diagnostics else None
    return write_reports(Path(output_dir), evaluated, report_settings, record, additions)
