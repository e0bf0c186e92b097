#!/usr/bin/env python
"""Prepare the slice cache of the data sets a config uses.

    python datasets/prepare.py --config-file configs/word/s2vnet_swinb.yaml --workers 8
    python datasets/prepare.py --config-file configs/phantom/s2vnet_phantom.yaml --dataset phantom_train

Reads every volume of DATASETS.TRAIN and DATASETS.TEST (or --datasets) once and writes uint8
image/label arrays plus metadata under DATASETS.CACHE_DIR. Resumable: finished volumes are
skipped unless their image or label file, or the settings that shape the cache (modality, classes,
ignore label), changed since; each volume is written atomically, and folders left by a killed run
are removed (docs/reliability.md). Volumes that fail (corrupt file, NaN voxels, label and
image grids that disagree, labels outside the class list) are reported at the end, with the file
and the problem, and the exit code is 1; the other volumes are still prepared.
"""
import argparse
import logging
import sys

import s2vnet  # noqa: F401  (Detectron2 compatibility shims)
from s2vnet.config import load_config
from s2vnet.data.datasets import register_datasets_from_config
from s2vnet.data.prepare import jobs_for_dataset, prepare_jobs
from s2vnet.utils.errors import InputError
from s2vnet.utils.logging import setup_cli_logging

logger = logging.getLogger("s2vnet.prepare")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="config naming the data sets and DATASETS.CACHE_DIR")
    parser.add_argument("--dataset", action="append", dest="datasets", help="a registered data set to prepare (repeatable; default: DATASETS.TRAIN + TEST)")
    parser.add_argument("--workers", type=int, default=1, help="volumes prepared in parallel")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    setup_cli_logging()
    try:
        cfg = load_config(args.config_file, args.opts)
        register_datasets_from_config(cfg)
        names = args.datasets or list(dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)))
        jobs = {}
        for name in names:
            for job in jobs_for_dataset(name, cfg.DATASETS.CACHE_DIR):
                jobs.setdefault(job.case_dir, job)  # splits of one data set share their volumes
    except InputError as error:
        logger.error("%s", error)
        return 2
    report = prepare_jobs(list(jobs.values()), workers=args.workers)
    logger.info(
        "Prepared %d, skipped %d (already cached), failed %d volume(s) -> %s",
        len(report.prepared), len(report.skipped), len(report.failed), cfg.DATASETS.CACHE_DIR,
    )
    if report.failed:
        for case_id, error in report.failed.items():
            logger.error("FAILED %s: %s", case_id, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
