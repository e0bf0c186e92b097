"""Checkpoints that describe the model they hold.

Every checkpoint the trainer writes carries, beside the weights, a :class:`ModelDescription` under
the key :data:`DESCRIPTION_KEY`: the class names, the modality and intensity normalisation of the
training data, the training data sets and the S2VNet version. Prediction reads the names and the
modality from it, so a model trained on any data set (an nnU-Net folder included) can be used
without that data set being registered or on disk.

The description is stored as a plain dict of strings and numbers (not a pickled class), so a
checkpoint stays loadable with ``torch.load(..., weights_only=True)`` and after this module
changes. A checkpoint written before models described themselves has no such key:
:func:`description_from_checkpoint` returns None for it, and the caller says what it assumes.
"""
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

from s2vnet import __version__
from s2vnet.data.intensity import CT_WINDOW, MRI_PERCENTILES
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "DESCRIPTION_KEY",
    "IntensityNormalization",
    "MODALITIES",
    "ModelDescription",
    "check_description_matches_config",
    "describe_model",
    "description_from_checkpoint",
]

#: Key of the model description in a checkpoint dict (beside "model", "iteration", ...).
DESCRIPTION_KEY = "model_description"
#: Modalities a description may name: a CT or MR model, or one trained on both (AMOS).
MODALITIES = ("CT", "MR", "mixed")


@dataclass(frozen=True)
class IntensityNormalization:
    """How volumes were mapped to uint8 for the network (:mod:`s2vnet.data.intensity`): CT clipped
    to a window in HU, MR to its own percentiles, both rescaled to [0, 255]."""

    ct_window: Tuple[float, float] = CT_WINDOW
    mr_percentiles: Tuple[float, float] = MRI_PERCENTILES

    def __str__(self) -> str:
        return f"CT window {list(self.ct_window)} HU, MR percentiles {list(self.mr_percentiles)}"


@dataclass(frozen=True)
class ModelDescription:
    """What a trained model segments and what input it expects."""

    class_names: Tuple[str, ...]  # index = class id, 0 = "background"
    num_classes: int
    modality: str  # "CT", "MR" or "mixed" (trained on both)
    intensity: IntensityNormalization = field(default_factory=IntensityNormalization)
    training_datasets: Tuple[str, ...] = ()
    s2vnet_version: str = __version__

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise InputError(
                f"model description: {len(self.class_names)} class names {list(self.class_names)} for {self.num_classes} classes"
            )
        if self.modality not in MODALITIES:
            raise InputError(f"model description: modality {self.modality!r} is not one of {list(MODALITIES)}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-compatible form, as stored in checkpoints."""
        return {
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "modality": self.modality,
            "intensity": {"ct_window": list(self.intensity.ct_window), "mr_percentiles": list(self.intensity.mr_percentiles)},
            "training_datasets": list(self.training_datasets),
            "s2vnet_version": self.s2vnet_version,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "ModelDescription":
        """The inverse of :meth:`to_dict`; ``where`` names the checkpoint in error messages.

        Raises:
            InputError: a key is missing or has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: '{DESCRIPTION_KEY}' must be a dict, got {type(data).__name__}")
        missing = [key for key in ("class_names", "num_classes", "modality", "intensity") if key not in data]
        if missing:
            raise InputError(f"{where}: the model description lacks {missing}")
        intensity = data["intensity"]
        try:
            return cls(
                class_names=tuple(str(name) for name in data["class_names"]),
                num_classes=int(data["num_classes"]),
                modality=str(data["modality"]),
                intensity=IntensityNormalization(
                    ct_window=_pair(intensity["ct_window"]), mr_percentiles=_pair(intensity["mr_percentiles"])
                ),
                training_datasets=tuple(str(name) for name in data.get("training_datasets", ())),
                s2vnet_version=str(data.get("s2vnet_version", "unknown")),
            )
        except InputError as error:
            raise InputError(f"{where}: {error}") from None
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{where}: the model description is malformed ({type(error).__name__}: {error})") from None


def _pair(values: Sequence[float]) -> Tuple[float, float]:
    low, high = values
    return float(low), float(high)


def describe_model(cfg) -> ModelDescription:
    """The description of the model ``cfg`` trains, from its registered training data sets.

    Class names come from the first of ``DATASETS.TRAIN`` (every S2VNet data set has
    ``stuff_classes``); the modality is theirs when they agree, else "mixed".

    Raises:
        InputError: no training data set, one that is not registered, or class names that do
            not match ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``.
    """
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise InputError("DATASETS.TRAIN is empty: a model is described by the data set it is trained on")
    unregistered = [name for name in names if name not in MetadataCatalog]
    if unregistered:
        raise InputError(f"training data set(s) {unregistered} are not registered (register_datasets_from_config first)")
    metadata = [MetadataCatalog.get(name) for name in names]
    class_names = tuple(metadata[0].get("stuff_classes", ()))
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if len(class_names) != num_classes:
        raise InputError(
            f"training data set {names[0]} has {len(class_names)} classes {list(class_names)}, "
            f"but MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}"
        )
    for name, other in zip(names[1:], metadata[1:]):
        if tuple(other.get("stuff_classes", ())) != class_names:
            logger.warning("training data set %s names its classes %s, %s %s; the model description uses the latter",
                           name, list(other.get("stuff_classes", ())), names[0], list(class_names))
    modalities = {m.get("modality", "CT") for m in metadata}
    modality = modalities.pop() if len(modalities) == 1 else "mixed"
    return ModelDescription(class_names=class_names, num_classes=num_classes, modality=modality, training_datasets=tuple(names))


def description_from_checkpoint(checkpoint: Mapping[str, Any], where: str) -> Optional[ModelDescription]:
    """The description stored in a loaded checkpoint dict, or None for a checkpoint written before
    models described themselves. ``where`` names the checkpoint in error messages."""
    if DESCRIPTION_KEY not in checkpoint:
        return None
    return ModelDescription.from_dict(checkpoint[DESCRIPTION_KEY], where)


def check_description_matches_config(description: ModelDescription, cfg, where: str) -> None:
    """Refuse a checkpoint whose description contradicts the config it is loaded with, or whose
    intensity normalisation this version of S2VNet does not apply.

    Raises:
        InputError: naming both values.
    """
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if description.num_classes != num_classes:
        raise InputError(
            f"{where} holds a model of {description.num_classes} classes {list(description.class_names)}, "
            f"but the config's MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}"
        )
    current = IntensityNormalization()
    if description.intensity != current:
        # normalize_intensity applies only the current constants: the model would see other inputs than in training.
        raise InputError(
            f"{where} was trained on intensities normalised with {description.intensity}, "
            f"but this S2VNet normalises with {current}"
        )
