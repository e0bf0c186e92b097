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
