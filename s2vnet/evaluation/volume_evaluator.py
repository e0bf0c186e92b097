"""Volume evaluation: automatic and interactive (DESIGN §7), per volume and class.

Model mode (:func:`evaluate_datasets`): every volume of a registered split is segmented
automatically and then refined over ``rounds`` simulated click rounds (the protocol of §3.3: first
click at the deepest point of each class's largest cross-section, then one corrective click per
class at the deepest point of its largest error region, labelled with the true label there: the
class on a false negative, background or the organ really there on a false positive). Volumes are
spread over the distributed ranks; each finished volume's rows are written to ``cases/<case>.json``
at once, so a killed run re-run with the same arguments skips them.

Folder mode (:func:`evaluate_folders`): any folder of segmentations against ground truth.

Metrics are computed on the canonical (z, y, x) array with its spacing: it is the original voxel
grid up to a permutation and flips of the axes (nothing is resampled), under which DSC, HD95 and
NSD are unchanged, so the numbers equal those on the file's own grid.
"""
import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from s2vnet.data.clicks import corrective_clicks, initial_clicks
from s2vnet.evaluation.click_diagnostics import click_records, fused_scores_at, round_change
from s2vnet.evaluation.metrics import boundary_band_dsc, score_case
from s2vnet.evaluation.reports import METRICS, _json_safe, write_reports
from s2vnet.utils.atomic import write_json_atomic
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)


def score_rows(
    case: str, pred: np.ndarray, gt: np.ndarray, spacing, class_ids, class_names, tolerance, protocol, ignore_label: Optional[int] = None,
    band_width: int = 1, **extra
) -> List[Dict]:
    """Rows of one case (and round) for every class in ``class_ids``; ``band_dsc`` is
    :func:`boundary_band_dsc` with a band of ``band_width`` pixels.

    Voxels the ground truth marks ``ignore_label`` (unannotated: nnU-Net's "ignore" label, 255
    once prepared) count for nothing: both sides are background there, as nnU-Net's own
    evaluation leaves them out of every count.
    """
    if ignore_label is not None:
        unannotated = gt == ignore_label
        if unannotated.any():
            pred, gt = np.where(unannotated, 0, pred), np.where(unannotated, 0, gt)
    scores = score_case(pred, gt, spacing, class_ids, nsd_tolerance_mm=tolerance, protocol=protocol)
    band = boundary_band_dsc(pred, gt, class_ids, width=band_width, protocol=protocol)
    return [
        {"case": case, "class_id": int(c), "class_name": class_names[c], "dsc": s.dsc, "hd95": s.hd95, "nsd": s.nsd, "band_dsc": band[c], **extra}
        for c, s in scores.items()
    ]


def evaluate_volume(
    predictor,
    case: str,
    image: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    class_ids: Sequence[int],
    class_names: Sequence[str],
    rounds: int,
    tolerance: float,
    protocol: str,
    ignore_label: Optional[int] = None,
    band_width: int = 1,
) -> Dict[str, List[Dict]]:
    """Automatic rows and, with ``rounds`` > 0, interactive rows for rounds 0..rounds of one volume,
    with a record of what each click did (``clicks``) and the voxels each round fixed and broke
    (``round_changes``; :mod:`s2vnet.evaluation.click_diagnostics`). Voxels labelled
    ``ignore_label`` are never clicked and not scored (:func:`score_rows`, which also takes ``band_width``)."""
    from s2vnet.inference.session import InteractiveSession  # inference builds on the model

    if rounds == 0:
        labels = predictor.predict_automatic(image).labels
        automatic = score_rows(case, labels, gt, spacing, class_ids, class_names, tolerance, protocol, ignore_label, band_width, mode="automatic")
        return {"automatic": automatic, "interactive": [], "clicks": [], "round_changes": []}
    session = InteractiveSession(predictor, image)
    current = session.result().labels  # the automatic prediction, from the same features
    automatic = score_rows(case, current, gt, spacing, class_ids, class_names, tolerance, protocol, ignore_label, band_width, mode="automatic")
    interactive = [dict(row, mode="interactive", round=0) for row in automatic]
    records, changes = [], []
    for round_index in range(1, rounds + 1):
        if round_index == 1:
            clicks = initial_clicks(gt, class_ids, spacing=spacing, ignore_label=ignore_label)
        else:
            clicks = corrective_clicks(gt, current, class_ids, spacing=spacing, ignore_label=ignore_label)
        if not clicks:  # nothing left to correct: later rounds equal this one
            rows = [dict(row, round=round_index) for row in interactive if row["round"] == round_index - 1]
            interactive += rows
            continue
        scores_before = fused_scores_at(session, clicks)
        for click in clicks:
            session.click(click.z, click.y, click.x, click.label)
        previous, current = current, session.run().labels
        records += click_records(case, round_index, clicks, previous, current, scores_before, fused_scores_at(session, clicks), class_names, gt)
        changes.append(round_change(case, round_index, previous, current, gt, clicks))
        interactive += score_rows(case, current, gt, spacing, class_ids, class_names, tolerance, protocol, ignore_label, band_width, mode="interactive", round=round_index)
    return {"automatic": automatic, "interactive": interactive, "clicks": records, "round_changes": changes}


def _load_rows(path: Path) -> Dict[str, List[Dict]]:
    data = json.loads(path.read_text())

    def restore(row):
        for metric in METRICS:
            value = row.get(metric)
            row[metric] = math.nan if value is None else (math.inf if value == "inf" else float(value))
        return row

    rows = {mode: [restore(r) for r in data[mode]] for mode in ("automatic", "interactive")}
    return {**rows, "clicks": data["clicks"], "round_changes": data["round_changes"]}


def evaluate_dataset(cfg, predictor, dataset_name: str, output_dir: Path, rounds: int, progress: bool = True) -> Dict:
    """Evaluate one registered split; returns the results dict (also written to ``output_dir``)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils import comm

    from s2vnet.data.prepare import PreparedVolume, case_cache_dir

    metadata = MetadataCatalog.get(dataset_name)
    class_names = list(metadata.stuff_classes)
    abbrevs = list(getattr(metadata, "stuff_abbrev", class_names))
    class_ids = list(range(1, len(class_names)))
    tolerance = cfg.TEST.NSD_TOLERANCE
    protocol = cfg.TEST.METRIC_PROTOCOL
    settings = {
        "dataset": dataset_name,
        "weights": cfg.MODEL.WEIGHTS,
        "rounds": rounds,
        "nsd_tolerance_mm": tolerance,
        "protocol": protocol,
        "propagation": cfg.MODEL.S2VNET.PROPAGATION.ENABLED,
        "aggregation": cfg.MODEL.S2VNET.AGGREGATION.ENABLED,
        "adaptive_sampling": cfg.MODEL.S2VNET.INTERACTION.ADAPTIVE_SAMPLING,
        "beta": cfg.MODEL.S2VNET.INTERACTION.BETA,
        "boundary_band_pixels": cfg.TEST.BOUNDARY_BAND_PIXELS,  # in-plane; case files scored with the older 3D band are redone
        "ignore_label": getattr(metadata, "ignore_label", None),  # unannotated voxels: never clicked, not scored
        "click_records": 4,  # version of the click records (4: error regions' size, depth, voxels fixed): older case files are redone
    }
    output_dir = Path(output_dir)
    case_dir = output_dir / "cases"
    records = DatasetCatalog.get(dataset_name)
    mine = records[comm.get_rank() :: comm.get_world_size()]
    for record in tqdm(mine, desc=f"eval {dataset_name}", unit="vol", disable=not progress or not comm.is_main_process()):
        result_path = case_dir / f"{record['case_id']}.json"
        if result_path.is_file() and json.loads(result_path.read_text()).get("settings") == settings:
            continue  # finished by an earlier (interrupted) run with the same settings
        volume = PreparedVolume(case_cache_dir(cfg.DATASETS.CACHE_DIR, metadata.root, record["image_file"]))
        if volume.label is None:
            raise InputError(f"{record['case_id']}: evaluation needs ground-truth labels, but {record['image_file']} has none")
        rows = evaluate_volume(
            predictor, record["case_id"], np.asarray(volume.image), np.asarray(volume.label), volume.spacing,
            class_ids, class_names, rounds, tolerance, protocol, settings["ignore_label"], cfg.TEST.BOUNDARY_BAND_PIXELS,
        )
        write_json_atomic(result_path, _json_safe({"settings": settings, **rows}))
    comm.synchronize()
    if not comm.is_main_process():
        return {}
    automatic, interactive, clicks, changes = [], [], [], []
    for record in records:
        rows = _load_rows(case_dir / f"{record['case_id']}.json")
        automatic += rows["automatic"]
        interactive += rows["interactive"]
        clicks += rows["clicks"]
        changes += rows["round_changes"]
    return write_reports(output_dir, automatic, interactive, class_ids, class_names, abbrevs, rounds, settings, clicks=clicks, round_changes=changes)


def evaluate_datasets(cfg, model, dataset_names: Sequence[str], output_dir, interactive_rounds: int = 0) -> Dict[str, Dict]:
    """Evaluate several splits with one model; returns {dataset: overall automatic means}."""
    from s2vnet.inference.volume_predictor import VolumePredictor

    predictor = VolumePredictor.from_config(cfg, model)
    summary = {}
    for name in dataset_names:
        results = evaluate_dataset(cfg, predictor, name, Path(output_dir) / name, interactive_rounds)
        if results:
            overall = results["automatic"]["overall"]
            summary[name] = {k: overall[k] for k in ("dsc", "hd95", "nsd") if overall.get(k) is not None}
            logger.info("%s: automatic mean DSC %s, HD95 %s mm, NSD %s", name, overall.get("dsc"), overall.get("hd95"), overall.get("nsd"))
    return summary


def evaluate_folders(
    pred_dir: Path,
    gt_dir: Path,
    output_dir: Path,
    class_names: Optional[Sequence[str]] = None,
    tolerance: float = 1.0,
    protocol: str = "standard",
    band_width: int = 1,
    progress: bool = True,
) -> Dict:
    """Score every ground-truth file in ``gt_dir`` against the same-named file in ``pred_dir``.

    Spacing comes from the ground truth; the prediction must lie on the same grid. Classes are
    ``class_names`` (index = label) if given, else every non-zero label found in either file.
    """
    from s2vnet.data.volume_io import read_label_volume

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
    rows = []
    found_classes = set()
    for gt_path in tqdm(gt_files, desc="score", unit="vol", disable=not progress):
        num_classes = len(class_names) if class_names else None
        gt = read_label_volume(gt_path, num_classes=num_classes)
        pred = read_label_volume(pred_dir / gt_path.name, reference=gt, num_classes=num_classes)
        # Without a class list, score every label in either file (a class only predicted scores DSC 0).
        ids = range(1, len(class_names)) if class_names else sorted((set(np.unique(gt.array).tolist()) | set(np.unique(pred.array).tolist())) - {0})
        found_classes.update(ids)
        names = list(class_names) if class_names else [str(i) for i in range(max(ids, default=0) + 1)]
        case = gt_path.name.split(".")[0]
        rows += score_rows(case, pred.array, gt.array, gt.spacing, list(ids), names, tolerance, protocol, band_width=band_width, mode="automatic")
    class_ids = sorted(found_classes)
    names = list(class_names) if class_names else [str(i) for i in range(max(class_ids, default=0) + 1)]
    settings = {"pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "nsd_tolerance_mm": tolerance, "protocol": protocol, "boundary_band_pixels": band_width}
    return write_reports(Path(output_dir), rows, [], class_ids, names, names, 0, settings)
