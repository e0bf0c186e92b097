"""Training engine: a Detectron2 ``DefaultTrainer`` for S2VNet.

What it adds to Detectron2's defaults:

* the clip data loader (prepared slice cache + :class:`ClipDatasetMapper`), checked up front;
* AdamW with the backbone learning-rate multiplier (§4.1) and no weight decay on norms, embeddings
  and position tables; gradient clipping on the norm of the whole model's gradient;
* mixed precision in fp16 *or* bf16, on GPU or CPU (Detectron2 v0.6's AMPTrainer is fp16/CUDA only);
* atomic checkpoints (a killed save never leaves a corrupt ``model_*.pth`` behind) that describe
  the model (class names, modality, intensity normalisation: :mod:`s2vnet.checkpoint`);
* ``test()`` that evaluates whole volumes with :mod:`s2vnet.evaluation`.

DDP comes from Detectron2 (``create_ddp_model``, without ``find_unused_parameters``: every parameter
gets a gradient in every step by construction, see :meth:`S2VNet.click_tracks`).
"""
import itertools
import logging
import os
import time
import weakref
from typing import Any, Dict, List, Optional, Set

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer
from detectron2.solver.build import maybe_add_gradient_clipping

import s2vnet.modeling  # noqa: F401  (registers the S2VNet meta architecture for build_model)
from s2vnet.checkpoint import DESCRIPTION_KEY, ModelDescription, describe_model
from s2vnet.data.clip_mapper import ClipDatasetMapper, check_prepared
from s2vnet.utils.atomic import atomic_path
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

# Parameters whose names contain these are embeddings or position tables: no weight decay.
_EMBEDDING_NAMES = ("query_feat", "query_embed", "level_embed", "extra_query_embed", "initial_memory",
                    "relative_position_bias_table", "absolute_pos_embed", "pos_embed", "cls_token")


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose ``save`` writes to a temporary file and renames it into place.

    Given a ``description``, every checkpoint it saves carries it (under
    :data:`s2vnet.checkpoint.DESCRIPTION_KEY`), so that the model can be used without its training
    data set. Loading ignores the key (Detectron2 returns it among the unused entries).
    """

    def __init__(self, model, save_dir: str = "", *, description: Optional[ModelDescription] = None, **kwargs: Any):
        super().__init__(model, save_dir, **kwargs)
        self.description = description

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if self.description is not None:
            data[DESCRIPTION_KEY] = self.description.to_dict()
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        with atomic_path(save_file) as tmp:
            torch.save(data, tmp)
        self.logger.info("Saved checkpoint to %s", save_file)
        self.tag_last_checkpoint(os.path.basename(save_file))


class AutocastTrainer(SimpleTrainer):
    """SimpleTrainer with autocast in fp16 (with a gradient scaler) or bf16 (without), on CUDA or CPU."""

    def __init__(self, model, data_loader, optimizer, dtype: torch.dtype):
        super().__init__(model, data_loader, optimizer)
        self.dtype = dtype
        self.device_type = "cuda" if next(model.parameters()).is_cuda else "cpu"
        self.grad_scaler = torch.amp.GradScaler(self.device_type, enabled=dtype == torch.float16)

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self):
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def autocast_supported(device: str, dtype: torch.dtype) -> bool:
    """Whether mixed precision in ``dtype`` is fast on ``device``: on CUDA, bf16 needs Ampere or
    newer; on CPU, only bf16 with native instructions (AVX512-BF16 / AMX) is faster than fp32."""
    if device.startswith("cuda"):
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    return dtype == torch.bfloat16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD) with per-parameter groups: backbone LR x BACKBONE_MULTIPLIER; weight decay
    WEIGHT_DECAY_NORM on normalisation layers and WEIGHT_DECAY_EMBED on embeddings/position tables."""
    norm_types = (
        torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm, torch.nn.GroupNorm,
        torch.nn.LayerNorm, torch.nn.LocalResponseNorm, torch.nn.InstanceNorm2d,
    )
    groups: List[Dict[str, Any]] = []
    seen: Set[torch.nn.Parameter] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, weight_decay = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
            if module_name.startswith("backbone"):
                lr *= cfg.SOLVER.BACKBONE_MULTIPLIER
            if isinstance(module, norm_types):
                weight_decay = cfg.SOLVER.WEIGHT_DECAY_NORM
            elif isinstance(module, torch.nn.Embedding) or any(k in f"{module_name}.{name}" for k in _EMBEDDING_NAMES):
                weight_decay = cfg.SOLVER.WEIGHT_DECAY_EMBED
            groups.append({"params": [param], "lr": lr, "weight_decay": weight_decay})

    clip = cfg.SOLVER.CLIP_GRADIENTS
    if cfg.SOLVER.OPTIMIZER == "ADAMW":
        optimizer_class = torch.optim.AdamW
        kwargs = {}
    else:
        optimizer_class = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM}
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_class = _full_model_clipping(optimizer_class, clip.CLIP_VALUE)
    optimizer = optimizer_class(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)
    if clip.ENABLED and clip.CLIP_TYPE != "full_model":
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer


def _full_model_clipping(optimizer_class, max_norm: float):
    """An optimizer class whose step first clips the global norm of all gradients (Mask2Former)."""

    class FullModelGradientClippingOptimizer(optimizer_class):
        def step(self, closure=None):
            all_params = itertools.chain(*[group["params"] for group in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, max_norm)
            return super().step(closure=closure)

    return FullModelGradientClippingOptimizer


class S2VNetTrainer(DefaultTrainer):
    def __init__(self, cfg):
        # Detectron2 v0.6 would build its fp16/CUDA-only AMPTrainer; ours replaces it below.
        base = cfg.clone()
        base.defrost()
        base.SOLVER.AMP.ENABLED = False
        base.freeze()
        super().__init__(base)  # builds the hooks, and with them our checkpointer (build_hooks)
        self.cfg = cfg
        if cfg.SOLVER.AMP.ENABLED:
            dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.SOLVER.AMP.DTYPE]
            if autocast_supported(cfg.MODEL.DEVICE, dtype):
                self._trainer = AutocastTrainer(self._trainer.model, self._trainer.data_loader, self._trainer.optimizer, dtype)
            else:
                logger.warning("SOLVER.AMP.DTYPE %s has no fast kernels on this %s: training in float32", cfg.SOLVER.AMP.DTYPE, cfg.MODEL.DEVICE)

    @classmethod
    def build_train_loader(cls, cfg):
        missing = check_prepared(cfg.DATASETS.TRAIN, cfg.DATASETS.CACHE_DIR)
        if missing:
            raise InputError(
                f"{len(missing)} training volume(s) are not in the slice cache {cfg.DATASETS.CACHE_DIR}, e.g. {missing[0]}: "
                f"run `python datasets/prepare.py --config-file <this config>` first"
            )
        return build_detection_train_loader(cfg, mapper=ClipDatasetMapper(cfg, True))

    def build_hooks(self):
        # DefaultTrainer.__init__ calls this right after making a plain DetectionCheckpointer, and the
        # PeriodicCheckpointer hook (periodic and final checkpoints) keeps the checkpointer it is
        # built with: install the atomic, self-describing one first. The trainer's state holds the
        # iteration, the optimizer and (through the LRScheduler hook) the scheduler, exactly as
        # Detectron2's own checkpointer does it.
        self.checkpointer = AtomicCheckpointer(
            self.model, self.cfg.OUTPUT_DIR, description=describe_model(self.cfg), trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    @staticmethod
    def build_checkpointer(model, cfg) -> AtomicCheckpointer:
        """Checkpointer for loading weights outside training (evaluation, prediction)."""
        return AtomicCheckpointer(model, cfg.OUTPUT_DIR)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None) -> Dict[str, Dict[str, float]]:
        """Automatic volume evaluation of every data set in DATASETS.TEST (DSC/HD95/NSD means)."""
        from s2vnet.evaluation.volume_evaluator import evaluate_datasets  # evaluation builds on inference

        if not cfg.DATASETS.TEST:
            return {}
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
        return evaluate_datasets(cfg, model, cfg.DATASETS.TEST, output_dir, interactive_rounds=0)
