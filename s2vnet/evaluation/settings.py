"""What an evaluation scores and how: one settings object, built in one place per mode.

Model mode builds it from the config, the data set's metadata and the command line
(:meth:`EvaluationSettings.from_config`); folder mode (``tools/eval_volume.py --pred-dir``) from
the command line alone. The per-volume and report functions of :mod:`s2vnet.evaluation` all take it.
"""
from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from s2vnet.evaluation.metrics import check_protocol
from s2vnet.utils.errors import InputError

__all__ = ["EvaluationSettings", "read_labels_file"]


@dataclass(frozen=True)
class EvaluationSettings:
    """How to evaluate.

    Attributes:
        class_names: name of every label, index = label (0 = background). Empty in folder mode
            without a class list: the classes are then the labels found, named by their ids.
        class_ids: the classes scored and clicked (``1..len(class_names) - 1`` in model mode).
        abbrevs: short class names for the Table-1 columns of summary.md (default: ``class_names``).
        rounds: interactive click rounds after the automatic prediction (0 = automatic only).
        nsd_tolerance_mm: NSD tolerance in mm, one value for all classes.
        protocol: metric conventions, ``"standard"`` or ``"word"`` (:data:`s2vnet.evaluation.metrics.PROTOCOLS`).
        ignore_label: ground-truth label of unannotated voxels: never clicked, not scored.
        diagnostics: also compute the diagnostics of :mod:`s2vnet.evaluation.diagnostics` (click
            records, error regions, round changes, the boundary-band DSC).
        band_width: width in pixels of the boundary band (diagnostics only).
    """

    class_names: tuple[str, ...] = ()
    class_ids: tuple[int, ...] = ()
    abbrevs: tuple[str, ...] = ()
    rounds: int = 0
    nsd_tolerance_mm: float = 1.0
    protocol: str = "standard"
    ignore_label: Optional[int] = None
    diagnostics: bool = False
    band_width: int = 1

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        for name in ("rounds", "band_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputError(f"{name}={value!r}: must be an integer")
        if self.rounds < 0:
            raise InputError(f"rounds={self.rounds}: the number of click rounds must be >= 0")
        if self.band_width < 1:
            raise InputError(f"band_width={self.band_width}: the boundary band width must be an integer number of pixels >= 1")

    def fingerprint(self) -> str:
        """SHA-256 of every setting: equal exactly when two evaluations score alike."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def table_names(self) -> tuple[str, ...]:
        """The names of the Table-1 columns: ``abbrevs``, else ``class_names``."""
        return self.abbrevs or self.class_names

    @classmethod
    def from_config(
        cls, cfg, dataset_name: str, rounds: Optional[int] = None, diagnostics: bool = False, band_width: int = 1
    ) -> "EvaluationSettings":
        """Settings of model mode for the registered split ``dataset_name``.

        Classes, their short names and the ignore label come from the split's metadata; the NSD
        tolerance and protocol from ``TEST.NSD_TOLERANCE`` and ``TEST.METRIC_PROTOCOL``; ``rounds``
        defaults to ``TEST.EVAL_ROUNDS``. ``diagnostics`` and ``band_width`` are command-line options.
        """
        from detectron2.data import MetadataCatalog

        metadata = MetadataCatalog.get(dataset_name)
        class_names = tuple(metadata.stuff_classes)
        return cls(
            class_names=class_names,
            class_ids=tuple(range(1, len(class_names))),
            abbrevs=tuple(getattr(metadata, "stuff_abbrev", class_names)),
            rounds=cfg.TEST.EVAL_ROUNDS if rounds is None else rounds,
            nsd_tolerance_mm=cfg.TEST.NSD_TOLERANCE,
            protocol=cfg.TEST.METRIC_PROTOCOL,
            ignore_label=getattr(metadata, "ignore_label", None),
            diagnostics=diagnostics,
            band_width=band_width,
        )

    @classmethod
    def for_folders(
        cls,
        class_names: Optional[Sequence[str]] = None,
        nsd_tolerance_mm: float = 1.0,
        protocol: str = "standard",
        diagnostics: bool = False,
        band_width: int = 1,
        ignore_label: Optional[int] = None,
    ) -> "EvaluationSettings":
        """Settings of folder mode: with ``class_names`` (index = label) every class 1.. is scored;
        without, each case's classes are the labels found in it (see ``evaluate_folders``).
        ``ignore_label`` is the ground truth's value of unannotated voxels (nnU-Net's "ignore")."""
        names = tuple(class_names or ())
        return cls(
            class_names=names,
            class_ids=tuple(range(1, len(names))),
            nsd_tolerance_mm=nsd_tolerance_mm,
            protocol=protocol,
            ignore_label=ignore_label,
            diagnostics=diagnostics,
            band_width=band_width,
        )


def read_labels_file(path: Path) -> Tuple[List[str], Optional[int]]:
    """Class names (index = label) and the ignore label (or None) of a dataset.json's ``labels``,
    checked as data preparation checks them (:func:`s2vnet.data.datasets.nnunet.parse_label_map`).

    Raises:
        InputError: naming ``path``: missing, not JSON, no ``labels`` mapping, or a label value
            that is not an integer (or values that are not 0..K-1).
    """
    from s2vnet.data.datasets.nnunet import parse_label_map, read_labels_json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--labels {path} does not exist")
    return parse_label_map(read_labels_json(path, f"--labels {path}")["labels"], path)
