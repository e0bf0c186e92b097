"""Volume inference: automatic sweeps (:class:`VolumePredictor`) and interactive sessions
(:class:`InteractiveSession`); the clicks.json format (:mod:`s2vnet.inference.click_file`) and the
per-case prediction behind ``tools/predict.py`` (:mod:`s2vnet.inference.case_prediction`)."""
import pickle
from pathlib import Path
from typing import Any, Dict, Sequence

from detectron2.checkpoint import DetectionCheckpointer

from s2vnet.utils.errors import InputError

#: How many parameter names an error lists before it says how many more there are.
_NAMES_SHOWN = 5
# What torch.load and pickle raise for a file that is not a (complete) checkpoint: a truncated
# zip archive, another file format, an empty file, or a pickled object that is not a dict.
_UNREADABLE_CHECKPOINT_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError)


class _InferenceCheckpointer(DetectionCheckpointer):
    """Loads trained weights for inference. Parameters that do not fit the model are kept in
    ``incompatible`` (for :func:`check_weights_fit`) instead of being logged as fvcore's warnings
    and then ignored, and a file that is no checkpoint is an :class:`InputError` naming it."""

    def __init__(self, model, name: str):
        super().__init__(model)
        self.name = name
        self.incompatible = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            checkpoint = super()._load_file(filename)
        except _UNREADABLE_CHECKPOINT_ERRORS as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "the file ends early"
            raise InputError(f"{self.name} cannot be read as a PyTorch checkpoint (corrupt or truncated?): {type(error).__name__}: {reason}") from None
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
            raise InputError(f"{self.name} is not a model checkpoint: it holds no dict of parameters under 'model'")
        return checkpoint

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return None  # fvcore logs what it is given back; check_weights_fit reports it as an error instead


def check_device(device: str, name: str) -> None:
    """Raise unless ``device`` (``cpu``, ``cuda`` or ``cuda:N``) is a device of this machine.

    ``name`` is how messages name the setting (``--device`` or ``MODEL.DEVICE``).
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"{name} {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return
    if parsed.type != "cuda":
        raise InputError(f"{name} {device}: only cpu, cuda and cuda:N are supported")
    if not torch.cuda.is_available():
        raise InputError(f"{name} {device}: no CUDA GPU is usable on this machine; use cpu")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise InputError(f"{name} {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown if len(names) <= _NAMES_SHOWN else f"{shown} and {len(names) - _NAMES_SHOWN} more"


def check_weights_fit(incompatible, name: str) -> None:
    """Raise unless the checkpoint ``name`` gave every parameter of the model, each of the right
    shape, and nothing else (``incompatible`` is fvcore's record of what did not load).

    Raises:
        InputError: naming the parameters of another shape, the missing and the unexpected ones.
    """
    problems = []
    if incompatible.incorrect_shapes:
        shapes = [f"{key} {tuple(ours)} in the file, {tuple(model)} in the model" for key, ours, model in incompatible.incorrect_shapes]
        problems.append(f"{len(shapes)} parameter(s) of another shape: {_some(shapes)}")
    # fvcore leaves the parameters of another shape out of the load, so they count as missing too.
    mismatched = {key for key, _, _ in incompatible.incorrect_shapes}
    missing = [key for key in incompatible.missing_keys if key not in mismatched]
    if missing:
        problems.append(f"{len(missing)} parameter(s) missing: {_some(missing)}")
    if incompatible.unexpected_keys:
        problems.append(f"{len(incompatible.unexpected_keys)} parameter(s) the model does not have: {_some(incompatible.unexpected_keys)}")
    if problems:
        raise InputError(
            f"{name} does not fit the model of this config ({'; '.join(problems)}); "
            "was it trained with another config (e.g. another MODEL.SEM_SEG_HEAD.NUM_CLASSES or backbone)?"
        )


def load_predictor(cfg, require_weights: bool = True):
    """Build the model of ``cfg``, load ``MODEL.WEIGHTS`` and wrap it in a :class:`VolumePredictor`.

    The predictor's ``description`` is the checkpoint's :class:`~s2vnet.checkpoint.ModelDescription`
    (class names, modality, intensity normalisation), or None for a checkpoint written before
    models described themselves (the caller decides what to assume then). Without weights
    (``require_weights=False``) the model keeps its random initialisation and has no
    description, which is what pipeline tests and benchmarks use.

    Raises:
        InputError: a ``MODEL.DEVICE`` this machine lacks; missing, unreadable or corrupt
            weights; weights that do not fit the model (:func:`check_weights_fit`); or a
            description that contradicts ``cfg``.
    """
    from detectron2.modeling import build_model

    import s2vnet.modeling  # noqa: F401  (registers the meta architecture)
    from s2vnet.checkpoint import check_description_matches_config, description_from_checkpoint
    from s2vnet.inference.volume_predictor import VolumePredictor

    check_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    weights = cfg.MODEL.WEIGHTS
    if weights and not Path(weights).is_file():
        raise InputError(f"MODEL.WEIGHTS {weights} does not exist")
    if not weights and require_weights:
        raise InputError("no trained weights given: add MODEL.WEIGHTS /path/to/model_final.pth")
    model = build_model(cfg)
    description = None
    if weights:
        name = f"MODEL.WEIGHTS {weights}"
        checkpointer = _InferenceCheckpointer(model, name)
        unused = checkpointer.load(weights)  # what is left after the weights: iteration, description, ...
        description = description_from_checkpoint(unused, name)
        if description is not None:
            # First: when it applies, it says what differs more plainly than the parameter shapes.
            check_description_matches_config(description, cfg, name)
        check_weights_fit(checkpointer.incompatible, name)
    return VolumePredictor.from_config(cfg, model.eval(), description=description)
