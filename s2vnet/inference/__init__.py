"""Volume inference: automatic sweeps (:class:`VolumePredictor`) and interactive sessions
(:class:`InteractiveSession`); the clicks.json format (:mod:`s2vnet.inference.click_file`) and the
per-case prediction behind ``tools/predict.py`` (:mod:`s2vnet.inference.case_prediction`)."""
from pathlib import Path

from s2vnet.utils.errors import InputError


def load_predictor(cfg, require_weights: bool = True):
    """Build the model of ``cfg``, load ``MODEL.WEIGHTS`` and wrap it in a :class:`VolumePredictor`.

    The predictor's ``description`` is the checkpoint's :class:`~s2vnet.checkpoint.ModelDescription`
    (class names, modality, intensity normalisation), or None for a checkpoint written before
    models described themselves (the caller decides what to assume then). Without weights
    (``require_weights=False``) the model keeps its random initialisation and has no
    description, which is what pipeline tests and benchmarks use.

    Raises:
        InputError: missing weights, or a description that contradicts ``cfg``.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import s2vnet.modeling  # noqa: F401  (registers the meta architecture)
    from s2vnet.checkpoint import check_description_matches_config, description_from_checkpoint
    from s2vnet.inference.volume_predictor import VolumePredictor

    model = build_model(cfg)
    weights = cfg.MODEL.WEIGHTS
    description = None
    if weights:
        if not Path(weights).is_file():
            raise InputError(f"MODEL.WEIGHTS {weights} does not exist")
        unused = DetectionCheckpointer(model).load(weights)  # what is left after the weights: iteration, description, ...
        description = description_from_checkpoint(unused, f"MODEL.WEIGHTS {weights}")
        if description is not None:
            check_description_matches_config(description, cfg, f"MODEL.WEIGHTS {weights}")
    elif require_weights:
        raise InputError("no trained weights given: add MODEL.WEIGHTS /path/to/model_final.pth")
    return VolumePredictor.from_config(cfg, model.eval(), description=description)
