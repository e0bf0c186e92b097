"""Volume inference: automatic sweeps (:class:`VolumePredictor`) and interactive sessions
(:class:`InteractiveSession`)."""
from pathlib import Path

from s2vnet.utils.errors import InputError


def load_predictor(cfg, require_weights: bool = True):
    """Build the model of ``cfg``, load ``MODEL.WEIGHTS`` and wrap it in a :class:`VolumePredictor`.

    Without weights (``require_weights=False``) the model keeps its random initialisation, which
    is what pipeline tests and benchmarks use.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import s2vnet.modeling  # noqa: F401  (registers the meta architecture)
    from s2vnet.inference.volume_predictor import VolumePredictor

    model = build_model(cfg)
    weights = cfg.MODEL.WEIGHTS
    if weights:
        if not Path(weights).is_file():
            raise InputError(f"MODEL.WEIGHTS {weights} does not exist")
        DetectionCheckpointer(model).load(weights)
    elif require_weights:
        raise InputError("no trained weights given: add MODEL.WEIGHTS /path/to/model_final.pth")
    return VolumePredictor.from_config(cfg, model.eval())
