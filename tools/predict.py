#!/usr/bin/env python
"""Segment volumes with a trained S2VNet, automatically or from clicks.

    python tools/predict.py --config-file configs/word/s2vnet_swinb.yaml --input ct.nii.gz --output seg.nii.gz \\
        MODEL.WEIGHTS output/word/s2vnet_swinb/model_final.pth
    python tools/predict.py --config-file ... --input cts/ --output segs/ MODEL.WEIGHTS ...     # a folder
    python tools/predict.py --config-file ... --input ct.nii.gz --output seg.nii.gz --clicks clicks.json MODEL.WEIGHTS ...

Inputs: NIfTI (.nii/.nii.gz), MHA/MHD/NRRD, or a folder holding one DICOM series (``--input`` may be
one of these or a folder of them). Outputs are label volumes on the input's exact grid (same
affine, shape and axis order), written atomically. ``--output`` is a file (.nii.gz, .nii, .mha or
.nrrd) for one input, a folder for a folder of inputs; an existing folder given for one input gets
the output inside it. In a folder, an input's output is ``<name>.nii.gz``: its name without the
volume suffix and without nnU-Net's channel suffix ``_0000`` (``case_0000.nii.gz`` ->
``case.nii.gz``, the name of its labels). With ``--save-probabilities`` each output also gets
``<name>_probabilities.nii.gz`` (4D, one class score map per class). Re-running skips the cases
whose outputs all exist (use ``--overwrite`` to redo them).

``--output-format dicom-seg`` writes, for DICOM series inputs, a DICOM Segmentation object
(``<name>.dcm``; a single ``--output`` must end in ``.dcm``) that references the series, one
segment per predicted class with its SNOMED CT code (``s2vnet/data/dicom_seg.py``), so that a
hospital's viewer and PACS can store it; ``--keep-empty-segments`` also lists the classes not found.
A volume file input is then an error, before the model is loaded.

Before any inference every output is named and checked: an output never replaces an input (not
even with ``--overwrite``, nor through a link) nor goes inside an input folder, two inputs may not
share an output, and output folders must be writable. In a folder run a case that fails does not
stop the others; the failures are listed at the end and the exit status is 1.

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
from s2vnet.inference.case_prediction import OUTPUT_FORMATS, CaseOutputs, is_volume_folder, list_inputs, plan_outputs, predict_case
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


def modality_argument(value: str) -> str:
    """``--modality``: CT or MR (any case; MRI means MR), checked when the arguments are parsed."""
    key = value.strip().upper()
    if key not in ("CT", "MR", "MRI"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a modality: use CT or MR")
    return "MR" if key == "MRI" else key


def predict_cases(
    predictor,
    cases: Sequence[CaseOutputs],
    clicks: Dict[Path, CaseClicks],
    modality: str,
    class_names: Sequence[str],
    save_probabilities: bool,
    output_format: str = "nifti",
    keep_empty_segments: bool = False,
) -> Dict[Path, str]:
    """Predict ``cases`` one after the other; a case that fails does not stop the others.
    Returns why each failed case failed (a message naming its input), by input."""
    failures = {}
    for case in tqdm(cases, desc="predict", unit="vol"):
        try:
            predict_case(predictor, case.source, case.labels, modality, clicks.get(case.source), save_probabilities, class_names,
                         output_format, keep_empty_segments)
        except InputError as error:
            failures[case.source] = str(error) if str(case.source) in str(error) else f"{case.source}: {error}"
        except OSError as error:  # e.g. a full disk, or an output name taken by a folder
            failures[case.source] = f"{case.source}: writing {case.labels} failed: {error}"
        else:
            continue
        logger.error("%s", failures[case.source])
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="config of the trained model")
    parser.add_argument("--input", required=True, help="a volume file, a DICOM folder, or a folder of volumes")
    parser.add_argument("--output", required=True, help="output file (one input) or folder (a folder input; for one input, an existing folder)")
    parser.add_argument("--clicks", help="clicks JSON (see above) for interactive prediction")
    parser.add_argument("--modality", type=modality_argument, help="CT or MR (default: the modality the model was trained on, else CT)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: MODEL.DEVICE)")
    parser.add_argument("--save-probabilities", action="store_true", help="also write per-class score maps")
    parser.add_argument("--output-format", choices=list(OUTPUT_FORMATS), default="nifti",
                        help="labels as a volume file (nifti: .nii.gz, .nii, .mha, .nrrd) or, for DICOM series, a DICOM-SEG (.dcm)")
    parser.add_argument("--keep-empty-segments", action="store_true", help="dicom-seg: also list the classes not found, as empty segments")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs (e.g. MODEL.WEIGHTS path)")
    args = parser.parse_args(argv)
    setup_cli_logging()
    try:
        from s2vnet.config import load_config
        from s2vnet.inference import check_device, load_predictor

        if args.device:
            check_device(args.device, "--device")
        if args.keep_empty_segments and args.output_format != "dicom-seg":
            raise InputError("--keep-empty-segments is for --output-format dicom-seg")
        overrides = list(args.opts) + (["MODEL.DEVICE", args.device] if args.device else [])
        cfg = load_config(args.config_file, overrides)
        input_path = Path(args.input)
        inputs = list_inputs(input_path, name=f"--input {input_path}")
        many = is_volume_folder(input_path, inputs)
        cases = plan_outputs(input_path, inputs, many, Path(args.output), args.save_probabilities, args.output_format)
        # The model before the clicks: its description names the classes that clicks may use.
        predictor = load_predictor(cfg)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        class_names, modality = names_and_modality(predictor.description, num_classes, args.modality, cfg.MODEL.WEIGHTS)
        clicks = load_clicks(args.clicks, inputs, many, class_names)
    except InputError as error:
        logger.error("%s", error)
        return 2

    todo = [case for case in cases if args.overwrite or not case.done()]
    skipped = len(cases) - len(todo)
    if skipped:
        logger.info("%d case(s) have all their outputs already and are skipped (--overwrite to redo)", skipped)
    failures = predict_cases(predictor, todo, clicks, modality, class_names, args.save_probabilities,
                             args.output_format, args.keep_empty_segments)
    logger.info("Wrote %d case(s) to %s; %d skipped (done already), %d failed", len(todo) - len(failures), args.output, skipped, len(failures))
    if failures:
        logger.error("%d of %d case(s) failed:\n%s", len(failures), len(cases), "\n".join(f"  {reason}" for reason in failures.values()))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
