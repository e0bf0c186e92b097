#!/usr/bin/env python
"""Write synthetic CT phantoms as an nnU-Net v2 raw dataset (for tests and the CPU demo).

Example (from the repository root)::

    python tools/make_phantoms.py --output datasets/phantom --num-train 24 --num-test 6 \\
        --seed 0 --shape 64 128 128 --workers 2

Re-running the same command skips finished cases, so an interrupted run can simply be
restarted; ``--overwrite`` regenerates everything. See :mod:`s2vnet.data.phantom` for what a
phantom contains.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Optional, Sequence

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from s2vnet.data.phantom import DEFAULT_SHAPE, write_phantom_dataset
from s2vnet.utils.errors import InputError

logger = logging.getLogger("make_phantoms")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of this tool."""
    parser = argparse.ArgumentParser(
        description="Generate synthetic abdominal CT phantoms in the nnU-Net v2 raw layout "
        "(imagesTr/labelsTr/imagesTs/labelsTs + dataset.json).",
    )
    parser.add_argument("--output", required=True, help="dataset folder to create or complete")
    parser.add_argument("--num-train", type=int, required=True, help="number of training cases")
    parser.add_argument("--num-test", type=int, default=0, help="number of test cases (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; case seeds derive from it (default: 0)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=list(DEFAULT_SHAPE),
        help="voxels per case, slices first (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=1, help="generator processes (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate cases that already exist")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tool; returns the process exit code (0 success, 2 bad arguments or input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    total = max(args.num_train, 0) + max(args.num_test, 0)
    counts = {"written": 0, "skipped": 0}
    start = time.perf_counter()
    try:
        with logging_redirect_tqdm(), tqdm(total=total, unit="case", desc="phantoms") as bar:

            def progress(split: str, case_id: str, written: bool) -> None:
                counts["written" if written else "skipped"] += 1
                bar.set_postfix_str(f"{split}/{case_id}", refresh=False)
                bar.update(1)

            out = write_phantom_dataset(
                args.output,
                num_train=args.num_train,
                num_test=args.num_test,
                seed=args.seed,
                shape=tuple(args.shape),
                workers=args.workers,
                overwrite=args.overwrite,
                progress=progress,
            )
    except InputError as exc:
        logger.error("%s", exc)
        return 2
    elapsed = time.perf_counter() - start
    per_case = elapsed / counts["written"] if counts["written"] else 0.0
    logger.info(
        "done: %s (%d train + %d test, shape %s): %d written, %d already present, %.1f s (%.2f s per written case)",
        out,
        args.num_train,
        args.num_test,
        "x".join(str(s) for s in args.shape),
        counts["written"],
        counts["skipped"],
        elapsed,
        per_case,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
