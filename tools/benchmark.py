#!/usr/bin/env python
"""Speed and memory of S2VNet, side by side, in one run (paper Table 5).

    python tools/benchmark.py --slices 32 --height 256 --width 256 --output benchmark.json
    python tools/benchmark.py --config-file configs/phantom/s2vnet_phantom.yaml --slices 64 --height 256 --width 256

On one synthetic CT phantom volume, same device and threads, each in its own process:

    s2vnet          automatic inference, propagation + aggregation (§4.1)
    baseline        the same weights with propagation and aggregation off (the paper's "Baseline");
                    propagation's overhead is timed alternately with and without it, in the same process
    swin_unetr      MONAI SwinUNETR (feature size 48), sliding window 96^3, overlap 0.5 (3D reference; --reference-repeats passes)
    dynunet         nnU-Net's default 3D U-Net for abdominal CT (MONAI DynUNet, 3d_fullres plan), sliding window at its
                    patch size 64 x 192 x 160, overlap 0.5, Gaussian weighting (what most users run instead; --reference-repeats)
    click_round     one interactive round (a click per organ) on a session with cached features;
                    its share of an automatic pass is timed alternately with one, in the same process
    encoder_*       backbone + pixel decoder over the volume, batched vs one slice at a time
    memory_<n>      automatic pass on n-slice volumes (--memory-slices), for peak memory vs depth
    train_step      training throughput (clips per second) at --train-size
    profile         seconds per module of one automatic pass
    data_pipeline   prepare step on --data-volumes phantoms, and loading one training clip from the cache

Reports volumes/minute, seconds/slice, peak memory and ratios to S2VNet, prints a table and writes
JSON (--output). Times are medians after warm-up; compare ratios within one run: shared machines
are noisy. Without MODEL.WEIGHTS the weights are random and the hand-over threshold is set to 0
so that every class is propagated (the worst case for S2VNet's cost).
"""
import argparse
import logging
import sys
from pathlib import Path

import torch

import s2vnet  # noqa: F401
from s2vnet.benchmark import run_in_subprocess
from s2vnet.utils.atomic import write_json_atomic
from s2vnet.utils.logging import setup_cli_logging

logger = logging.getLogger("s2vnet.benchmark")

ALL = ("s2vnet", "baseline", "swin_unetr", "dynunet", "click_round", "encoder", "memory", "train_step", "profile", "data_pipeline")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/word/s2vnet_swinb.yaml", help="S2VNet model to measure")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (same for every measurement)")
    parser.add_argument("--slice-batch", type=int, default=16, help="slices per encoder batch (TEST.SLICE_BATCH_SIZE)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--reference-repeats", type=int, default=1,
        help="timed passes of each 3D reference (swin_unetr, dynunet), without warm-up "
             "(one SwinUNETR pass is already 25 windows at 256 x 256; ~10 s each on 2 CPU cores)",
    )
    parser.add_argument("--memory-slices", type=int, nargs=2, default=(32, 128), metavar=("FEW", "MANY"))
    parser.add_argument("--train-size", type=int, default=256, help="crop size of the training-throughput step")
    parser.add_argument("--train-batch", type=int, default=2, help="clips per training step")
    parser.add_argument("--data-volumes", type=int, default=20, help="phantom volumes of the data_pipeline measurement")
    parser.add_argument("--data-workers", type=int, default=2, help="prepare workers of the data_pipeline measurement")
    parser.add_argument("--only", nargs="+", choices=ALL, help="run only these measurements")
    parser.add_argument("--skip", nargs="+", choices=ALL, default=(), help="skip these measurements")
    parser.add_argument("--output", help="JSON file for the results")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser.parse_args(argv)


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_cli_logging()
    selected = [k for k in (args.only or ALL) if k not in args.skip]
    base = {
        "config_file": args.config_file, "opts": args.opts, "device": args.device, "threads": args.threads,
        "slice_batch": args.slice_batch, "warmup": args.warmup, "repeats": args.repeats,
        "slices": args.slices, "height": args.height, "width": args.width,
        "train_size": args.train_size, "train_batch": args.train_batch,
        "data_volumes": args.data_volumes, "data_workers": args.data_workers,
    }
    plan = []
    for kind in selected:
        if kind == "encoder":
            plan += [("encoder_batched", "encoder_batched", base), ("encoder_single", "encoder_single", base)]
        elif kind in ("swin_unetr", "dynunet"):
            plan.append((kind, kind, dict(base, warmup=0, repeats=args.reference_repeats)))
        elif kind == "memory":
            plan += [(f"memory_{n}", "s2vnet", dict(base, slices=n, repeats=1)) for n in args.memory_slices]
        else:
            plan.append((kind, kind, base))
    results, failed = {}, {}
    for name, kind, options in plan:
        logger.info("measuring %s ...", name)
        try:
            results[name] = run_in_subprocess(kind, options)
        except Exception as error:  # one broken measurement (e.g. a missing extra) must not lose the others
            failed[name] = str(error)
            logger.error("%s", failed[name].splitlines()[0])
            continue
        logger.info("%s: %s s", name, _fmt(results[name].get("median_s"), 3))

    reference = results.get("s2vnet", {}).get("median_s")
    reference_memory = results.get("s2vnet", {}).get("peak_mb")
    rows = []
    for name, record in results.items():
        if name in ("profile", "train_step", "data_pipeline") or "median_s" not in record:
            continue
        record["time_ratio_to_s2vnet"] = record["median_s"] / reference if reference else None
        record["memory_ratio_to_s2vnet"] = record["peak_mb"] / reference_memory if reference_memory and record.get("peak_mb") else None
        rows.append(
            f"| {name} | {record['slices']}x{record['height']}x{record['width']} | {_fmt(record.get('volumes_per_minute'))} | "
            f"{_fmt(record.get('seconds_per_slice'), 3)} | {_fmt(record.get('peak_mb'), 0)} | {_fmt(record['time_ratio_to_s2vnet'])} | "
            f"{_fmt(record['memory_ratio_to_s2vnet'])} |"
        )
    table = ["| measurement | volume | volumes/min | s/slice | peak MB | time / S2VNet | memory / S2VNet |", "|---|---|---|---|---|---|---|"] + rows
    findings = {}
    if "baseline" in results:
        # From passes with and without propagation timed alternately in one process (noise-robust).
        baseline = results["baseline"]
        findings["propagation_overhead_pct"] = 100.0 * (baseline["paired_s2vnet_s"] / baseline["paired_baseline_s"] - 1.0)
    if "click_round" in results:
        # From the round and automatic passes timed alternately in one process (noise-robust).
        click = results["click_round"]
        findings["click_round_pct_of_automatic_pass"] = 100.0 * click["paired_round_s"] / click["paired_automatic_s"]
    many, few = (f"memory_{n}" for n in reversed(args.memory_slices))
    if many in results and few in results:
        findings["memory_growth_pct"] = 100.0 * (results[many]["peak_mb"] / results[few]["peak_mb"] - 1.0)
    for name in ("swin_unetr", "dynunet"):  # the 3D references
        if name in results and reference:
            findings[f"speedup_vs_{name}"] = results[name]["median_s"] / reference
            findings[f"memory_saving_vs_{name}_pct"] = 100.0 * (1.0 - reference_memory / results[name]["peak_mb"])
    if "encoder_batched" in results and "encoder_single" in results:
        findings["batched_encoder_speedup"] = results["encoder_single"]["median_s"] / results["encoder_batched"]["median_s"]
    if "train_step" in results:
        findings["train_clips_per_second"] = results["train_step"]["clips_per_second"]
    if "data_pipeline" in results:
        data = results["data_pipeline"]
        findings[f"prepare_seconds_{data['prepare_volumes']}_volumes"] = data["prepare_seconds"]
        findings["clip_load_ms_median"] = data["clip_load_ms_median"]
    print("\n".join(table))
    for key, value in findings.items():
        print(f"{key}: {_fmt(value)}")
    if "profile" in results:
        total = results["profile"]["median_s"]
        print("profile of one automatic pass (s, share):")
        for module, seconds in sorted(results["profile"]["modules_s"].items(), key=lambda kv: -kv[1]):
            print(f"  {module}: {seconds:.3f} ({100 * seconds / total:.1f}%)")
    for name, error in failed.items():
        print(f"FAILED {name}: {error.splitlines()[0]}")
    if args.output:
        write_json_atomic(
            Path(args.output),
            {"settings": dict(base), "results": results, "failed": failed, "findings": findings, "table": table},
        )
        logger.info("wrote %s", args.output)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
