"""The clicks.json format: clicks on a volume, grouped in refinement rounds.

Coordinates are voxel indices (i, j, k) of the input *file* (its own axis order), labels a class
name or id (0 / "background" = a negative click); each round is decoded in one pass::

    {"rounds": [[{"ijk": [120, 88, 40], "label": "liver"}, {"ijk": [60, 70, 41], "label": 0}],
                [{"ijk": [118, 90, 52], "label": "liver"}]]}

A flat ``{"clicks": [...]}`` is one round (a set with both ``rounds`` and ``clicks`` is refused:
which one was meant is unknown). A file for a folder of volumes keys the click sets by file name:
``{"cases": {"ct_001.nii.gz": {"rounds": [...]}}}``.

:func:`read_click_file` / :func:`read_folder_click_file` read and check a file (every error names
the file, case, round and click), :func:`write_click_file` writes one (e.g. a session's click log).
Whether a click lies inside its volume is checked once the volume is read, before it is encoded
(:meth:`CaseClicks.check_inside`).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from s2vnet.utils.atomic import write_json_atomic
from s2vnet.utils.errors import InputError

__all__ = [
    "CaseClicks",
    "VoxelClick",
    "class_id",
    "parse_case_clicks",
    "read_click_file",
    "read_folder_click_file",
    "write_click_file",
]


@dataclass(frozen=True)
class VoxelClick:
    """One click: a voxel of the input file and the class it marks (0 = background, a negative click)."""

    ijk: Tuple[int, int, int]
    class_id: int

    def to_json(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """``{"ijk": [i, j, k], "label": ...}``, the label a class name when ``class_names`` are given."""
        label = class_names[self.class_id] if class_names is not None else self.class_id
        return {"ijk": [int(v) for v in self.ijk], "label": label}


@dataclass(frozen=True)
class CaseClicks:
    """The clicks of one volume, round by round (each round is decoded in one pass). ``source``
    names where they were read from (the clicks file, and the case in a folder's file) for
    messages; it takes no part in comparisons."""

    rounds: Tuple[Tuple[VoxelClick, ...], ...]
    source: str = field(default="clicks", compare=False)

    def check_inside(self, shape: Sequence[int], volume: str) -> None:
        """Raise unless every click is a voxel of ``volume``, whose file grid has ``shape``.

        Raises:
            InputError: naming the clicks file (and case), the round, the click and the volume.
        """
        for r, round_clicks in enumerate(self.rounds):
            for c, click in enumerate(round_clicks):
                outside = [axis for axis, (index, size) in enumerate(zip(click.ijk, shape)) if not 0 <= index < size]
                if outside:
                    raise InputError(
                        f"{self.source} round {r} click {c}: voxel {list(click.ijk)} is outside {volume}, "
                        f"whose shape is {tuple(shape)} (axis {outside[0]} goes from 0 to {shape[outside[0]] - 1})"
                    )

    def to_json(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        return {"rounds": [[click.to_json(class_names) for click in round_clicks] for round_clicks in self.rounds]}


def class_id(label: Any, class_names: Sequence[str], where: str) -> int:
    """The class id of a click label: an id in 0..K-1 or one of ``class_names``."""
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise InputError(f"{where}: label {label!r} must be a class name or id")
    if isinstance(label, int):
        if not 0 <= label < len(class_names):
            raise InputError(f"{where}: label id {label} is not a class (valid: 0..{len(class_names) - 1})")
        return label
    if label not in class_names:
        raise InputError(f"{where}: label {label!r} is not a class name; classes are {list(class_names)}")
    return list(class_names).index(label)


def parse_case_clicks(spec: Any, class_names: Sequence[str], source: str) -> CaseClicks:
    """The click rounds of one case (``{"rounds": ...}`` or ``{"clicks": ...}``), checked.
    ``source`` names the case in error messages."""
    if isinstance(spec, dict) and "rounds" in spec and "clicks" in spec:
        raise InputError(f"{source}: a click set has both 'rounds' and 'clicks'; give one of them (a flat 'clicks' list is one round)")
    if isinstance(spec, dict) and "rounds" in spec:
        rounds = spec["rounds"]
    elif isinstance(spec, dict) and "clicks" in spec:
        rounds = [spec["clicks"]]
    else:
        raise InputError(f"{source}: a click set needs 'rounds' (a list of lists of clicks) or 'clicks' (a list)")
    if not isinstance(rounds, list) or not all(isinstance(r, list) for r in rounds):
        raise InputError(f"{source}: 'rounds' must be a list of lists of clicks")
    parsed: List[Tuple[VoxelClick, ...]] = []
    for r, round_clicks in enumerate(rounds):
        parsed_round = []
        for c, click in enumerate(round_clicks):
            where = f"{source} round {r} click {c}"
            if not isinstance(click, dict) or "ijk" not in click or "label" not in click:
                raise InputError(f"{where}: a click is {{'ijk': [i, j, k], 'label': name or id}}, got {click!r}")
            ijk = click["ijk"]
            if not isinstance(ijk, list) or len(ijk) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in ijk):
                raise InputError(f"{where}: 'ijk' must be three integer voxel indices, got {ijk!r}")
            parsed_round.append(VoxelClick(tuple(ijk), class_id(click["label"], class_names, where)))
        parsed.append(tuple(parsed_round))
    return CaseClicks(tuple(parsed), source)


def _read_json_object(path: Union[str, Path], name: Optional[str]) -> Tuple[Path, str, dict]:
    file = Path(path)
    name = name or str(file)
    if not file.is_file():
        raise InputError(f"{name} does not exist")
    try:
        spec = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{name} is not valid JSON: {error}") from None
    if not isinstance(spec, dict):
        raise InputError(f"{name}: the top level must be an object")
    return file, name, spec


def read_click_file(path: Union[str, Path], class_names: Sequence[str], name: Optional[str] = None) -> CaseClicks:
    """The clicks of one volume from ``path``.

    Args:
        class_names: the model's classes (index = id), for labels given by name.
        name: how messages name the file as a whole (default its path; ``predict.py`` says
            ``--clicks <path>``).

    Raises:
        InputError: a missing or unreadable file, or a click that is not well formed.
    """
    file, _, spec = _read_json_object(path, name)
    return parse_case_clicks(spec, class_names, str(file))


def read_folder_click_file(
    path: Union[str, Path], class_names: Sequence[str], case_names: Sequence[str], name: Optional[str] = None
) -> Dict[str, CaseClicks]:
    """The click sets of a folder of volumes, by file name (``{"cases": {file name: ...}}``).

    Args:
        case_names: the file names of the volumes; a click set for any other name is an error,
            volumes without one are left out of the result.
        class_names, name: as for :func:`read_click_file`.
    """
    file, name, spec = _read_json_object(path, name)
    cases = spec.get("cases")
    if not isinstance(cases, dict):
        raise InputError(f"{name}: for a folder input, key click sets by file name under 'cases'")
    unknown = sorted(set(cases) - set(case_names))
    if unknown:
        raise InputError(f"{name}: no input named {unknown[:3]} in the input folder")
    return {case: parse_case_clicks(value, class_names, f"{file} case {case}") for case, value in cases.items()}


def write_click_file(
    path: Union[str, Path], clicks: Union[CaseClicks, Mapping[str, CaseClicks]], class_names: Optional[Sequence[str]] = None
) -> None:
    """Write the clicks of one volume, or of several by file name (``{"cases": ...}``), atomically,
    in the layout the readers above accept. Labels are class names when ``class_names`` are
    given, else class ids."""
    if isinstance(clicks, CaseClicks):
        data = clicks.to_json(class_names)
    else:
        data = {"cases": {case: case_clicks.to_json(class_names) for case, case_clicks in clicks.items()}}
    write_json_atomic(path, data)
