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
``{"cases": {"ct_001.nii.gz": {"rounds": [...]}}}``. Class names are the model's own: the checkpoint
describes the model (class names, modality), so the training data set need not be registered or
present. The format lives in ``s2vnet/inference/click_file.py``, the per-case prediction in
``s2vnet/inference/case_prediction.py``; this tool only parses arguments and reports.
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

import s2vnet  # noqa: F401  (Detectron2 compatibility shims)
from s2vnet.checkpoint import ModelDescription
from s2vnet.inference.case_prediction import is_volume_folder, list_inputs, output_path_for, predict_case
from s2vnet.inference.click_file import CaseClicks, read_click_file, read_folder_click_file
from s2vnet.utils.errors import InputError
from s2vnet.utils.logging import setup_cli_logging

logger = logging.getLogger("s2vnet.predict")


def load_clicks(path: Optional[str], inputs: Sequence[Path], many: bool, class_names: Sequence[str]) -> Dict[Path, CaseClicks]:
    """The click rounds of each input that has clicks in the ``--clicks`` file (none without one)."""
    if not path:
        return {}
    name = f"--clicks {Path(path)}"
    if not many:
        return {inputs[0]: read_click_file(path, class_names, name)}
    by_name = {p.name: p for p in inputs}
    cases = read_folder_click_file(path, class_names, list(by_name), name)
    return {by_name[case]: clicks for case, clicks in cases.items()}


def names_and_modality(
    description: Optional[ModelDescription], num_classes: int, modality: Optional[str], weights: str
) -> Tuple[List[str], str]:
    """Class names (for names in clicks) and the modality to normalise inputs as (``--modality``
    first), from the checkpoint's description; for a checkpoint without one, class ids and CT."""
    if description is None:
        assumed = f"{modality} (--modality)" if modality else "CT (pass --modality MR for MR volumes)"
        logger.warning(
            "MODEL.WEIGHTS %s has no model description (it was written before checkpoints described their model): "
            "its class names and modality are unknown, so clicks must give class ids (0..%d) and volumes are normalised as %s",
            weights, num_classes - 1, assumed,
        )
        return [str(i) for i in range(num_classes)], modality or "CT"
    if modality is None:
        modality = description.modality if description.modality in ("CT", "MR") else "CT"
        if description.modality != modality:
            logger.info("The model was trained on %s volumes: normalising as %s (pass --modality MR for MR volumes)",
                        description.modality, modality)
    return list(description.class_names), modality


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="config of the trained model")
    parser.add_argument("--input", required=True, help="a volume file, a DICOM folder, or a folder of volumes")
    parser.add_argument("--output", required=True, help="output file (one input) or folder (a folder input)")
    parser.add_argument("--clicks", help="clicks JSON (see above) for interactive prediction")
    parser.add_argument("--modality", help="CT or MR (default: the modality the model was trained on, else CT)")
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
        inputs = list_inputs(Path(args.input), name=f"--input {Path(args.input)}")
        many = is_volume_folder(Path(args.input), inputs)
        output = Path(args.output)
        if many and output.suffix in (".gz", ".nii", ".mha"):
            raise InputError(f"--output {output} looks like a file, but --input {args.input} is a folder of volumes")
        # The model first: its description names the classes that clicks may use.
        predictor = load_predictor(cfg)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        class_names, modality = names_and_modality(predictor.description, num_classes, args.modality, cfg.MODEL.WEIGHTS)
        clicks = load_clicks(args.clicks, inputs, many, class_names)
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


if __name__ == "__main__":
    sys.exit(main())
