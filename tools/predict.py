#!/usr/bin/env python
"""Segment volumes with a trained S2VNet, automatically or from clicks.

    python tools/predict.py --config-file configs/word/s2vnet_swinb.yaml --input ct.nii.gz --output seg.nii.gz \\
        MODEL.WEIGHTS output/word/s2vnet_swinb/model_final.pth
    python tools/predict.py --config-file ... --input cts/ --output segs/ MODEL.WEIGHTS ...     # a folder
    python tools/predict.py --config-file ... --input ct.nii.gz --output seg.nii.gz --clicks clicks.json MODEL.WEIGHTS ...

Inputs: NIfTI (.nii/.nii.gz), MHA/MHD/NRRD, or a folder holding one DICOM series (``--input`` may be
one of these or a folder of them). Outputs are label volumes on the input's exact grid (same
affine, shape and axis order), written atomically; re-running skips outputs that exist (use
``--overwrite`` to redo them). With ``--save-probabilities`` each output also gets
``<name>_probabilities.nii.gz`` (4D, one class score map per class).

Clicks (``--clicks``) are JSON. Coordinates are voxel indices (i, j, k) of the input file, labels
a class name or id (0 / "background" = a negative click); clicks are grouped in refinement
rounds, each round decoded in one pass::

    {"rounds": [[{"ijk": [120, 88, 40], "label": "liver"}, {"ijk": [60, 70, 41], "label": 0}],
                [{"ijk": [118, 90, 52], "label": "liver"}]]}

A flat ``{"clicks": [...]}`` is one round. For a folder input, key the click sets by file name:
``{"cases": {"ct_001.nii.gz": {"rounds": [...]}}}``.
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

import s2vnet  # noqa: F401  (Detectron2 compatibility shims)
from s2vnet.utils.errors import InputError
from s2vnet.utils.logging import setup_cli_logging

logger = logging.getLogger("s2vnet.predict")

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def list_inputs(path: Path) -> List[Path]:
    """One volume (file or DICOM folder), or every volume in a folder."""
    if not path.exists():
        raise InputError(f"--input {path} does not exist")
    if path.is_file():
        return [path]
    entries = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(VOLUME_SUFFIXES))
    entries += sorted(p for p in path.iterdir() if p.is_dir())  # DICOM series, one per sub-folder
    if entries:
        return entries
    return [path]  # the folder itself is a DICOM series (read_volume says so if it is not)


def output_path_for(source: Path, output: Path, many: bool) -> Path:
    if not many:
        return output
    name = source.name
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output / f"{name}.nii.gz"


def class_index(label, class_names: Sequence[str], where: str) -> int:
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise InputError(f"{where}: label {label!r} must be a class name or id")
    if isinstance(label, int):
        if not 0 <= label < len(class_names):
            raise InputError(f"{where}: label id {label} is not a class (valid: 0..{len(class_names) - 1})")
        return label
    if label not in class_names:
        raise InputError(f"{where}: label {label!r} is not a class name; classes are {list(class_names)}")
    return class_names.index(label)


def parse_rounds(spec: Dict, class_names: Sequence[str], source: str) -> List[List[Dict]]:
    """The click rounds of one case, validated: [[{"ijk": (i, j, k), "label": id}, ...], ...]."""
    if "rounds" in spec:
        rounds = spec["rounds"]
    elif "clicks" in spec:
        rounds = [spec["clicks"]]
    else:
        raise InputError(f"{source}: a click set needs 'rounds' (a list of lists of clicks) or 'clicks' (a list)")
    if not isinstance(rounds, list) or not all(isinstance(r, list) for r in rounds):
        raise InputError(f"{source}: 'rounds' must be a list of lists of clicks")
    parsed = []
    for r, round_clicks in enumerate(rounds):
        parsed_round = []
        for c, click in enumerate(round_clicks):
            where = f"{source} round {r} click {c}"
            if not isinstance(click, dict) or "ijk" not in click or "label" not in click:
                raise InputError(f"{where}: a click is {{'ijk': [i, j, k], 'label': name or id}}, got {click!r}")
            ijk = click["ijk"]
            if not isinstance(ijk, list) or len(ijk) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in ijk):
                raise InputError(f"{where}: 'ijk' must be three integer voxel indices, got {ijk!r}")
            parsed_round.append({"ijk": tuple(ijk), "label": class_index(click["label"], class_names, where)})
        parsed.append(parsed_round)
    return parsed


def load_clicks(path: Optional[str], inputs: Sequence[Path], many: bool, class_names: Sequence[str]) -> Dict[Path, List[List[Dict]]]:
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--clicks {file} does not exist")
    try:
        spec = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"--clicks {file} is not valid JSON: {error}") from None
    if not isinstance(spec, dict):
        raise InputError(f"--clicks {file}: the top level must be an object")
    if not many:
        return {inputs[0]: parse_rounds(spec, class_names, str(file))}
    cases = spec.get("cases")
    if not isinstance(cases, dict):
        raise InputError(f"--clicks {file}: for a folder input, key click sets by file name under 'cases'")
    by_name = {p.name: p for p in inputs}
    unknown = sorted(set(cases) - set(by_name))
    if unknown:
        raise InputError(f"--clicks {file}: no input named {unknown[:3]} in the input folder")
    return {by_name[name]: parse_rounds(value, class_names, f"{file} case {name}") for name, value in cases.items()}


def class_names_of(cfg) -> List[str]:
    """Class names from the training data set's metadata when it is registered (names in clicks
    need them), else the class ids as strings."""
    from detectron2.data import MetadataCatalog

    from s2vnet.data.datasets import register_datasets_from_config

    try:
        register_datasets_from_config(cfg)
    except InputError as error:
        logger.warning("Class names unavailable (%s); clicks must give label ids", error)
        return [str(i) for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    names = list(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("stuff_classes", [])) if cfg.DATASETS.TRAIN else []
    if len(names) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        return [str(i) for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    return names


def predict_case(predictor, source: Path, target: Path, modality: str, rounds, save_probabilities: bool, class_names) -> None:
    from s2vnet.data.intensity import normalize_intensity
    from s2vnet.data.volume_io import read_volume, write_label_volume, write_probability_volume
    from s2vnet.inference.session import InteractiveSession

    volume = read_volume(source)
    if rounds:
        session = InteractiveSession(predictor, volume, modality=modality, class_names=class_names)
        for round_clicks in rounds:
            for click in round_clicks:
                session.click_voxel(*click["ijk"], click["label"])
            session.run()
        labels = session.result().labels
        probabilities = None
        if save_probabilities:
            probabilities = session.fused_probabilities()
    else:
        prediction = predictor.predict_automatic(normalize_intensity(volume.array, modality, str(source)), return_scores=save_probabilities)
        labels, probabilities = prediction.labels, prediction.scores
    if probabilities is not None:
        name = target.name[: -len(".nii.gz")] if target.name.endswith(".nii.gz") else target.stem
        write_probability_volume(probabilities.astype(np.float32), volume.geometry, target.with_name(f"{name}_probabilities.nii.gz"))
    write_label_volume(labels, volume.geometry, target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="config of the trained model")
    parser.add_argument("--input", required=True, help="a volume file, a DICOM folder, or a folder of volumes")
    parser.add_argument("--output", required=True, help="output file (one input) or folder (a folder input)")
    parser.add_argument("--clicks", help="clicks JSON (see above) for interactive prediction")
    parser.add_argument("--modality", help="CT or MR (default: the training data set's modality, else CT)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: MODEL.DEVICE)")
    parser.add_argument("--save-probabilities", action="store_true", help="also write per-class score maps")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs (e.g. MODEL.WEIGHTS path)")
    args = parser.parse_args(argv)
    setup_cli_logging()
    try:
        from s2vnet.config import load_config
        from s2vnet.inference import load_predictor

        overrides = list(args.opts) + (["MODEL.DEVICE", args.device] if args.device else [])
        cfg = load_config(args.config_file, overrides)
        inputs = list_inputs(Path(args.input))
        many = Path(args.input).is_dir() and not (len(inputs) == 1 and inputs[0] == Path(args.input))
        output = Path(args.output)
        if many and output.suffix in (".gz", ".nii", ".mha"):
            raise InputError(f"--output {output} looks like a file, but --input {args.input} is a folder of volumes")
        class_names = class_names_of(cfg)
        clicks = load_clicks(args.clicks, inputs, many, class_names)
        modality = args.modality or _training_modality(cfg)
        predictor = load_predictor(cfg)
    except InputError as error:
        logger.error("%s", error)
        return 2

    todo = [(source, output_path_for(source, output, many)) for source in inputs]
    done = [t for _, t in todo if t.exists() and not args.overwrite]
    if done:
        logger.info("%d output(s) exist already and are skipped (--overwrite to redo)", len(done))
    failures = {}
    for source, target in tqdm([(s, t) for s, t in todo if args.overwrite or not t.exists()], desc="predict", unit="vol"):
        try:
            predict_case(predictor, source, target, modality, clicks.get(source), args.save_probabilities, class_names)
        except InputError as error:
            failures[source] = str(error)
            logger.error("%s", error)
    logger.info("Wrote %d volume(s) to %s; %d skipped, %d failed", len(todo) - len(done) - len(failures), output, len(done), len(failures))
    return 1 if failures else 0


def _training_modality(cfg) -> str:
    from detectron2.data import MetadataCatalog

    if cfg.DATASETS.TRAIN and cfg.DATASETS.TRAIN[0] in MetadataCatalog.list():
        modality = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("modality", "CT")
        if modality in ("CT", "MR"):
            return modality
    return "CT"


if __name__ == "__main__":
    sys.exit(main())
