#!/usr/bin/env python
"""Train (or evaluate) S2VNet with Detectron2's trainer and launcher.

    python tools/train_net.py --config-file configs/word/s2vnet_swinb.yaml --num-gpus 4
    python tools/train_net.py --config-file ... --resume                 # continue from the last checkpoint
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file ... --num-machines 2 --machine-rank 0 --dist-url tcp://host:port

Multi-GPU and multi-node training is Detectron2's ``launch`` (PyTorch DDP). The training data must
be prepared first (``datasets/prepare.py``). On a CPU-only machine set ``MODEL.DEVICE cpu``.
"""
import logging
import os
import sys

import s2vnet  # noqa: F401  (Detectron2 compatibility shims)
import s2vnet.modeling  # noqa: F401  (registers the S2VNet meta architecture and backbones)
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm

from s2vnet.config import load_config
from s2vnet.data.datasets import register_datasets_from_config
from s2vnet.engine.trainer import S2VNetTrainer
from s2vnet.utils.errors import InputError

logger = logging.getLogger("s2vnet.train")


def check_weights(cfg, resume: bool) -> None:
    """Refuse a local ``MODEL.WEIGHTS`` that does not exist, before any process starts, unless
    ``--resume`` will load the last checkpoint of ``OUTPUT_DIR`` instead.

    Raises:
        InputError: naming the file.
    """
    weights = cfg.MODEL.WEIGHTS
    if not weights or "://" in weights:  # nothing to load, or a URL Detectron2 fetches itself
        return
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    if not os.path.isfile(weights):
        what = "is not a file" if os.path.exists(weights) else "does not exist"
        raise InputError(f"MODEL.WEIGHTS {weights} {what}")


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    register_datasets_from_config(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = S2VNetTrainer.build_model(cfg)
        S2VNetTrainer.build_checkpointer(model, cfg).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = S2VNetTrainer.test(cfg, model)
        if comm.is_main_process():
            logger.info("Evaluation results: %s", results)
        return results
    trainer = S2VNetTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None) -> int:
    args = default_argument_parser().parse_args(argv)
    try:
        check_weights(load_config(args.config_file, args.opts), args.resume)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except InputError as error:
        logging.getLogger("s2vnet.train").error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
