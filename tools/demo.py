#!/usr/bin/env python
"""The embedded default: S2VNet end to end on a CPU, with no data set and no download.

    bash scripts/demo.sh            # ~14-18 minutes on 2 CPU cores
    bash scripts/demo.sh --quick    # a ~2-minute smoke run (few iterations, small phantoms)

1. generates a CT phantom data set (nnU-Net layout; train and a separately seeded test split),
2. prepares the slice cache,
3. trains the phantom CPU config (configs/phantom/s2vnet_phantom.yaml),
4. evaluates the test split automatically and interactively (5 click rounds),
5. predicts one test volume to NIfTI, automatically and from a clicks.json,
6. renders overlays (axial, coronal, sagittal; ground truth vs automatic vs interactive),

and writes everything under ``demo_output/``: summary.md (Table-1 layout), dsc_per_round.png,
overlay PNGs, predictions, the checkpoint and the TensorBoard logs (train/). Re-running resumes:
finished stages are skipped.
"""
import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import s2vnet  # noqa: F401
from s2vnet.config import load_config, schedule_overrides
from s2vnet.utils.errors import InputError
from s2vnet.utils.logging import setup_cli_logging

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("s2vnet.demo")

# The full demo trains for the config's SOLVER.MAX_ITER (iters None); the quick run for 100.
FULL = {"train": 24, "test": 6, "shape": (64, 128, 128), "iters": None, "rounds": 5}
QUICK = {"train": 6, "test": 2, "shape": (32, 64, 64), "iters": 100, "rounds": 2}


def run(step: str, command, log_file: Path) -> None:
    """Run one stage as its own process, streaming its output to the terminal and a log file."""
    logger.info("[%s] %s", step, " ".join(str(c) for c in command))
    start = time.time()
    with open(log_file, "a") as log:
        process = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        for line in process.stdout:
            log.write(line)
            if "Warning" not in line and "warnings.warn" not in line:
                sys.stdout.write(line)
        if process.wait():
            raise SystemExit(f"demo stage '{step}' failed (exit code {process.returncode}); see {log_file}")
    logger.info("[%s] done in %.0f s", step, time.time() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~2-minute smoke run")
    parser.add_argument("--output", default="demo_output", help="output folder")
    parser.add_argument("--config-file", default="configs/phantom/s2vnet_phantom.yaml")
    parser.add_argument("--iters", type=int, help="training iterations (default: the config's SOLVER.MAX_ITER; quick 100)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="extra config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    setup_cli_logging()
    plan = QUICK if args.quick else FULL
    iters = args.iters if args.iters is not None else plan["iters"] or load_config(args.config_file).SOLVER.MAX_ITER
    schedule = schedule_overrides(iters)  # rejects a budget below 1 before anything is made
    out = (REPO / args.output).resolve() if not Path(args.output).is_absolute() else Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "demo.log"
    python = sys.executable
    data, cache, train_dir = out / "data" / "Dataset_Phantom", out / "cache", out / "train"
    overrides = [
        "DATASETS.NNUNET", f'["phantom={data}"]', "DATASETS.CACHE_DIR", str(cache), "OUTPUT_DIR", str(train_dir),
    ] + schedule + list(args.opts)
    started = time.time()

    run("phantoms", [python, "tools/make_phantoms.py", "--output", data, "--num-train", plan["train"], "--num-test", plan["test"],
                     "--seed", 0, "--shape", *plan["shape"], "--workers", 2], log_file)
    run("prepare", [python, "datasets/prepare.py", "--config-file", args.config_file, "--workers", 2, *overrides], log_file)
    weights = train_dir / "model_final.pth"
    if weights.is_file():
        logger.info("[train] %s exists: skipped (delete it to retrain)", weights)
    else:
        run("train", [python, "tools/train_net.py", "--config-file", args.config_file, "--resume", *overrides], log_file)
    eval_dir = out / "eval"
    run("evaluate", [python, "tools/eval_volume.py", "--config-file", args.config_file, "--rounds", plan["rounds"],
                     "--output", eval_dir, *overrides, "MODEL.WEIGHTS", weights], log_file)
    for name in ("summary.md", "dsc_per_round.png", "results.json", "results.csv"):
        if (eval_dir / name).exists():
            shutil.copy(eval_dir / name, out / name)

    # Predict one test volume: automatically, and from clicks (a positive click per organ).
    test_images = sorted((data / "imagesTs").glob("*_0000.nii.gz"))
    image = test_images[0]
    case = image.name[: -len("_0000.nii.gz")]
    prediction_dir = out / "predictions"
    automatic = prediction_dir / f"{case}_automatic.nii.gz"
    interactive = prediction_dir / f"{case}_interactive.nii.gz"
    clicks_file = prediction_dir / f"{case}_clicks.json"
    write_demo_clicks(data / "labelsTs" / f"{case}.nii.gz", clicks_file)
    run("predict", [python, "tools/predict.py", "--config-file", args.config_file, "--input", image, "--output", automatic,
                    *overrides, "MODEL.WEIGHTS", weights], log_file)
    run("predict (clicks)", [python, "tools/predict.py", "--config-file", args.config_file, "--input", image, "--output", interactive,
                             "--clicks", clicks_file, *overrides, "MODEL.WEIGHTS", weights], log_file)
    ground_truth = data / "labelsTs" / f"{case}.nii.gz"
    run("overlays", [python, "tools/visualize.py", "--image", image, "--labels", f"ground truth={ground_truth}",
                     f"automatic={automatic}", f"interactive (1 click per organ)={interactive}", "--output", out / f"overlay_{case}.png",
                     "--class-names", data / "dataset.json"], log_file)

    results = json.loads((out / "results.json").read_text())
    automatic_dsc = results["automatic"]["overall"]["dsc"]
    interactive_dsc = results["interactive"]["overall"]["dsc"]
    per_round = results.get("dsc_per_round", {})
    minutes = (time.time() - started) / 60
    print()
    print(f"S2VNet demo finished in {minutes:.1f} min. Report: {out / 'summary.md'}")
    print(f"  test split: automatic mean DSC {100 * automatic_dsc:.1f}%, interactive after {plan['rounds']} rounds {100 * interactive_dsc:.1f}%, "
          f"HD95 {results['automatic']['overall']['hd95']:.2f} mm -> {results['interactive']['overall']['hd95']:.2f} mm")
    print("  DSC per round: " + ", ".join(f"{r}: {100 * v:.1f}" for r, v in per_round.items() if v is not None))
    print(f"  overlays: {out / f'overlay_{case}.png'}; predictions: {prediction_dir}; checkpoint and TensorBoard logs: {train_dir}")
    return 0


def write_demo_clicks(label_file: Path, clicks_file: Path) -> None:
    """A clicks.json with one positive click per organ present, at the deepest point of its largest
    cross-section (what a user would click first), in the file's own voxel grid."""
    from s2vnet.data.clicks import initial_clicks
    from s2vnet.data.volume_io import canonical_to_original_index, read_label_volume

    labels = read_label_volume(label_file)
    clicks = initial_clicks(labels.array, list(range(1, int(labels.array.max()) + 1)), spacing=labels.spacing)
    ijk = [canonical_to_original_index(labels.geometry, (c.z, c.y, c.x)) for c in clicks]
    spec = {"rounds": [[{"ijk": list(index), "label": c.label} for index, c in zip(ijk, clicks)]]}
    clicks_file.parent.mkdir(parents=True, exist_ok=True)
    clicks_file.write_text(json.dumps(spec, indent=2))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as error:  # a bad config file or value: one line naming it, no traceback
        logger.error("%s", error)
        sys.exit(2)
