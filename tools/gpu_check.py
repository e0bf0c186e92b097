#!/usr/bin/env python
"""The GPU readiness check: gpu tests and the paper's Table 5 on one GPU, in at most 8 minutes.

    bash scripts/gpu_check.sh OUTPUT_DIR                        # on a GPU machine (docs/gpu.md)
    bash scripts/gpu_check.sh OUTPUT_DIR --device cpu --tiny    # the dry run: every step, toy sizes

Installs what the machine lacks from gpu_wheels/ (scripts/gpu_wheels.sh), runs the tests marked gpu,
measures S2VNet, the Baseline, SwinUNETR and DynUNet (bf16, then fp32) on a 200 x 512 x 512
synthetic CT, a click round and a training step at the paper's batch, and writes OUTPUT_DIR/gpu_check.json
and OUTPUT_DIR/gpu_check.md (rewritten after every step). Exit status 1 if a step failed, overran its
budget or did not fit in the time limit. What each step does: s2vnet/benchmark/gpu_check.py.
"""
import argparse
import logging
import sys
from pathlib import Path

from s2vnet.benchmark.gpu_check import FIRST_STEPS, REPO, CheckSettings, measurement_plan, report_markdown, run_check
from s2vnet.utils.logging import setup_cli_logging

logger = logging.getLogger("s2vnet.gpu_check")


def _budget(text: str):
    name, _, seconds = text.partition("=")
    try:
        return name, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget takes STEP=SECONDS, got {text!r}") from None


def parse_args(argv=None):
    steps = list(FIRST_STEPS) + [m.name for m in measurement_plan(True, False)]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path, help="where gpu_check.json and gpu_check.md go (nothing else is written there)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for the dry run")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (8 x 64 x 64 volume, 2 clips of 64^2): checks the steps, not the numbers")
    parser.add_argument("--config-file", default="configs/word/s2vnet_swinb.yaml", help="the S2VNet model (default: the paper's Swin-B)")
    parser.add_argument("--wheels", type=Path, default=REPO / "gpu_wheels", help="the wheels folder of scripts/gpu_wheels.sh")
    parser.add_argument("--site", type=Path, default=CheckSettings.site_dir, help="where missing packages are installed (default: %(default)s)")
    parser.add_argument("--time-limit", type=float, default=480.0, help="seconds for the whole check (default 480: 8 minutes)")
    parser.add_argument("--budget", type=_budget, action="append", default=[], metavar="STEP=SECONDS", help="another budget for one step")
    parser.add_argument("--only", nargs="+", default=(), metavar="STEP", help=f"run only these steps or tests; steps: {', '.join(steps)}")
    parser.add_argument("--skip", nargs="+", default=(), metavar="STEP", help="skip these steps")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of each measurement (default: all)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_cli_logging()
    config = Path(args.config_file)
    if not config.is_absolute() and not config.exists():  # a repository path, such as the default
        config = REPO / config
    settings = CheckSettings(
        output_dir=args.output_dir.resolve(), device=args.device, tiny=args.tiny, config_file=str(config.resolve()),
        wheels_dir=args.wheels.resolve(), site_dir=args.site.resolve(), time_limit_s=args.time_limit, budgets=dict(args.budget),
        only=tuple(args.only), skip=tuple(args.skip), threads=args.threads,
    )
    report = run_check(settings)
    print(report_markdown(report))  # last, so that a terminal (or the device tool's output tail) shows it
    logger.info("wrote %s and %s: %s", args.output_dir / "gpu_check.json", args.output_dir / "gpu_check.md", "PASSED" if report.passed else "FAILED")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
