#!/usr/bin/env python
"""Render overlays of segmentations on their image to PNG (axial, coronal, sagittal).

    python tools/visualize.py --image ct.nii.gz --labels ground_truth=gt.nii.gz prediction=seg.nii.gz \\
        --output overlay.png [--modality CT] [--cut Z Y X] [--class-names dataset.json]

Each ``--labels name=path`` becomes one row; the planes cut through the centre of the first
label volume's foreground unless ``--cut`` gives (z, y, x) in the canonical orientation.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

import s2vnet  # noqa: F401
from s2vnet.data.intensity import normalize_intensity
from s2vnet.data.volume_io import read_label_volume, read_volume
from s2vnet.evaluation.visualize import render_overlays
from s2vnet.utils.errors import InputError
from s2vnet.utils.logging import setup_cli_logging

logger = logging.getLogger("s2vnet.visualize")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="image volume (NIfTI, MHA, NRRD or a DICOM folder)")
    parser.add_argument("--labels", nargs="+", required=True, help="name=path of each label volume to overlay")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--modality", default="CT", help="CT (window -175..250 HU) or MR (percentile window)")
    parser.add_argument("--cut", nargs=3, type=int, metavar=("Z", "Y", "X"), help="where the planes cut (canonical indices)")
    parser.add_argument("--class-names", help="dataset.json whose 'labels' name the classes")
    args = parser.parse_args(argv)
    setup_cli_logging()
    try:
        image = read_volume(args.image)
        volumes = {}
        for entry in args.labels:
            if "=" not in entry:
                raise InputError(f"--labels entry {entry!r} must be name=path")
            name, path = entry.split("=", 1)
            volumes[name] = read_label_volume(path, reference=image).array
        names = None
        if args.class_names:
            labels = json.loads(Path(args.class_names).read_text())["labels"]
            by_id = {int(v): k for k, v in labels.items()}
            names = [by_id.get(i, str(i)) for i in range(max(by_id) + 1)]
        path = render_overlays(normalize_intensity(image.array, args.modality, args.image), volumes, image.spacing, Path(args.output), args.cut, names)
    except InputError as error:
        logger.error("%s", error)
        return 2
    logger.info("Wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
