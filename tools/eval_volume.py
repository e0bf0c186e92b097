#!/usr/bin/env python
"""DSC / HD95 / NSD reports, automatic and interactive (docs/evaluation.md).

Model mode: evaluate registered splits with a trained model, automatically and over simulated
click rounds (first click at the deepest point of each organ's largest cross-section, then one
corrective click per organ and round at the deepest point of its largest error region):

    python tools/eval_volume.py --config-file configs/word/s2vnet_swinb.yaml --rounds 15 \\
        MODEL.WEIGHTS output/word/s2vnet_swinb/model_final.pth
    python tools/eval_volume.py --config-file ... --num-gpus 4 ...      # volumes spread over GPUs

Folder mode: score any folder of segmentations against ground truth (files matched by name):

    python tools/eval_volume.py --pred-dir preds/ --gt-dir labelsTs/ --nsd-tolerance 2 --output report/

Each output folder gets results.json (every case x class row, means, counts of undefined and
infinite values), results.csv, summary.md (the paper's Table 1 layout) and, with rounds,
dsc_per_round.png and NoC@85/90. Re-running the same command skips volumes already evaluated,
as long as the weights' content, the config, the settings, the S2VNet version and the prepared
volume are unchanged (the log says how many were reused).

--diagnostics adds the analyses of s2vnet/evaluation/diagnostics/ (both modes): the boundary-band
DSC (band_dsc, --band-width pixels) and, with rounds, what each click did (clicks.csv, error
regions, the voxels each round fixed and broke) and their paragraphs in summary.md.
"""
import argparse
import logging
import sys
from pathlib import Path

import s2vnet  # noqa: F401  (Detectron2 compatibility shims)
import s2vnet.modeling  # noqa: F401  (registers the model)
from detectron2.engine import launch
from detectron2.utils import comm

from s2vnet.utils.errors import InputError
from s2vnet.utils.logging import setup_cli_logging

logger = logging.getLogger("s2vnet.eval")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model mode")
    model.add_argument("--config-file", help="config of the trained model (with its data sets)")
    model.add_argument("--dataset", action="append", dest="datasets", help="a registered split to evaluate (repeatable; default: DATASETS.TEST)")
    model.add_argument("--rounds", type=int, default=None, help="interactive click rounds (default: TEST.EVAL_ROUNDS = 15; 0 = automatic only)")
    model.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) per machine; volumes are spread over them")
    model.add_argument("--num-machines", type=int, default=1)
    model.add_argument("--machine-rank", type=int, default=0)
    model.add_argument("--dist-url", default="auto")
    folders = parser.add_argument_group("folder mode")
    folders.add_argument("--pred-dir", help="folder of predicted label volumes")
    folders.add_argument("--gt-dir", help="folder of ground-truth label volumes (names matching --pred-dir)")
    folders.add_argument("--labels", help="dataset.json whose 'labels' name the classes (default: every label found)")
    parser.add_argument("--output", help="report folder (default: <OUTPUT_DIR>/eval/<split> in model mode)")
    parser.add_argument("--nsd-tolerance", type=float, default=None, help="NSD tolerance in mm (default: TEST.NSD_TOLERANCE, 1.0)")
    parser.add_argument("--protocol", choices=("standard", "word"), default=None, help="'word' = the WORD benchmark's own script")
    parser.add_argument("--diagnostics", action="store_true", help="also compute the diagnostics: click records, error regions, round changes, band DSC")
    parser.add_argument("--band-width", type=int, default=None, help="in-plane outline band of the band DSC, pixels (with --diagnostics; default 1)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs (model mode)")
    args = parser.parse_args(argv)
    if bool(args.pred_dir) != bool(args.gt_dir):
        parser.error("folder mode needs both --pred-dir and --gt-dir")
    if not args.pred_dir and not args.config_file:
        parser.error("give --config-file (model mode) or --pred-dir and --gt-dir (folder mode)")
    if args.band_width is not None and not args.diagnostics:
        parser.error("--band-width sets the boundary band of the diagnostics: give it with --diagnostics")
    args.band_width = 1 if args.band_width is None else args.band_width
    return args


def model_mode(args):
    from detectron2.utils.env import seed_all_rng

    from s2vnet.config import load_config
    from s2vnet.data.datasets import register_datasets_from_config
    from s2vnet.evaluation.settings import EvaluationSettings
    from s2vnet.evaluation.volume_evaluator import check_output_folder, evaluate_dataset
    from s2vnet.inference import load_predictor

    overrides = list(args.opts)
    if args.nsd_tolerance is not None:
        overrides += ["TEST.NSD_TOLERANCE", str(args.nsd_tolerance)]
    if args.protocol:
        overrides += ["TEST.METRIC_PROTOCOL", args.protocol]
    cfg = load_config(args.config_file, overrides)
    seed_all_rng(cfg.SEED + comm.get_rank())
    register_datasets_from_config(cfg)
    names = args.datasets or list(cfg.DATASETS.TEST)
    outputs = {
        name: Path(args.output) / name if args.output and len(names) > 1 else Path(args.output or Path(cfg.OUTPUT_DIR) / "eval" / name)
        for name in names
    }
    for output in outputs.values():  # before the model is loaded and anything evaluated
        check_output_folder(output)
    predictor = load_predictor(cfg)
    summaries = {}
    for name, output in outputs.items():
        settings = EvaluationSettings.from_config(cfg, name, rounds=args.rounds, diagnostics=args.diagnostics, band_width=args.band_width)
        results = evaluate_dataset(cfg, predictor, name, output, settings)
        if comm.is_main_process() and results:
            summaries[name] = results
            logger.info("%s: report in %s", name, output / "summary.md")
            logger.info("\n%s", (output / "summary.md").read_text())
    return summaries


def folder_mode(args):
    from s2vnet.evaluation.settings import EvaluationSettings, read_labels_file
    from s2vnet.evaluation.volume_evaluator import evaluate_folders

    class_names, ignore_label = read_labels_file(Path(args.labels)) if args.labels else (None, None)
    output = Path(args.output or "eval_report")
    settings = EvaluationSettings.for_folders(
        class_names,
        nsd_tolerance_mm=args.nsd_tolerance if args.nsd_tolerance is not None else 1.0,
        protocol=args.protocol or "standard",
        diagnostics=args.diagnostics,
        band_width=args.band_width,
        ignore_label=ignore_label,
    )
    results = evaluate_folders(Path(args.pred_dir), Path(args.gt_dir), output, settings)
    logger.info("Report in %s\n%s", output / "summary.md", (output / "summary.md").read_text())
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_cli_logging()
    try:
        if args.pred_dir:
            folder_mode(args)
        else:
            launch(model_mode, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except InputError as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
