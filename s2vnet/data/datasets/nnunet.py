"""Registration of any dataset in the nnU-Net v2 raw layout, plus the catalog helpers shared by all
S2VNet datasets.

Layout (https://github.com/MIC-DKFZ/nnUNet/blob/master/documentation/dataset_format.md)::

    root/
      dataset.json        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, ...},
                           "file_ending": ".nii.gz", ...}
      imagesTr/{case}_0000{file_ending}   (+ _0001, ... for further channels)
      labelsTr/{case}{file_ending}
      imagesTs/{case}_0000{file_ending}   optional, registered as ``{name}_test``
      labelsTs/{case}{file_ending}        optional

Every registered dataset is a Detectron2 ``DatasetCatalog`` entry that returns ONE DICT PER VOLUME::

    {"case_id", "image_file", "label_file" (or None), "modality" ("CT"/"MR"), "dataset_name"}

and a ``MetadataCatalog`` entry with ``stuff_classes`` (index = label value, 0 = "background"),
``stuff_abbrev``, ``num_classes``, ``ignore_label`` (255), ``modality`` ("CT", "MR" or "mixed"),
``root`` and ``evaluator_type`` ("volume").

Registration is explicit (nothing happens at import) and cheap: the dataset.json is validated when
registering, but image folders are only listed when the dataset is loaded, so that a config naming
many datasets does not walk all of them.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from s2vnet.data.intensity import modality_from_channel_name
from s2vnet.utils.errors import InputError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Label value the training pipeline uses for "not annotated" (padding, nnU-Net ignore regions).
IGNORE_LABEL = 255
#: ``evaluator_type`` of every S2VNet dataset: evaluation is per volume, not per slice.
EVALUATOR_TYPE = "volume"
#: nnU-Net's key for a partially-annotated dataset's "not annotated" label (always the largest value).
NNUNET_IGNORE_KEY = "ignore"
#: Default of nnU-Net v1 / Medical Segmentation Decathlon dataset.json files, which have no file_ending.
DEFAULT_FILE_ENDING = ".nii.gz"

# nnU-Net names images {case}_{channel:04d}{file_ending}.
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

# dataset.json files whose multi-channel warning was already logged (the warning is per dataset,
# not per registration or per load).
_WARNED_MULTICHANNEL: set = set()


# ------------------------------------------------------------------------------------------------
# Catalog helpers shared with builtin.py
# ------------------------------------------------------------------------------------------------
def absolute_path(path: PathLike) -> Path:
    """Absolute path without resolving symlinks (users often symlink dataset folders; the path they
    gave is the one worth showing in messages)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _same_folder(a: PathLike, b: PathLike) -> bool:
    return os.path.realpath(str(a)) == os.path.realpath(str(b))


def volume_dataset_names() -> List[str]:
    """Names of all registered S2VNet volume datasets (``evaluator_type == "volume"``), sorted.

    Detectron2 registers COCO, LVIS, ... on import; those are left out so that error messages list
    only the datasets S2VNet can train on.
    """
    names = []
    for name in DatasetCatalog.list():
        # `in MetadataCatalog` first: MetadataCatalog.get would create an empty entry as a side effect.
        if name in MetadataCatalog and MetadataCatalog.get(name).get("evaluator_type") == EVALUATOR_TYPE:
            names.append(name)
    return sorted(names)


def register_volume_datasets(entries: Sequence[Tuple[str, Callable[[], List[dict]], Dict[str, Any]]]) -> List[str]:
    """Register several (name, loader, metadata) entries, all or none.

    Each ``metadata`` must contain ``root`` and ``split_params`` (how the split is made). A name that
    is already registered with the same root and split parameters is left as it is (registration is
    idempotent, so tools may call it more than once); with another root, with other split parameters,
    or by something other than S2VNet it is an :class:`InputError`. All names are checked before any
    is registered, so a conflict never leaves half of a dataset's splits registered.

    Returns:
        The names of all entries (newly registered or already present).
    """
    to_register = []
    for name, loader, metadata in entries:
        if name not in DatasetCatalog:
            to_register.append((name, loader, metadata))
            continue
        existing = MetadataCatalog.get(name) if name in MetadataCatalog else None
        old_root = existing.get("root") if existing is not None else None
        if old_root is None:
            raise InputError(
                f"Dataset name '{name}' is already registered by something other than S2VNet "
                f"(it has no 'root' in its metadata); choose another name for {metadata['root']}."
            )
        if not _same_folder(old_root, metadata["root"]):
            raise InputError(
                f"Dataset '{name}' is already registered with root {old_root}; cannot register it "
                f"again with root {metadata['root']}. Use another name."
            )
        if existing.get("split_params") != metadata["split_params"]:
            raise InputError(
                f"Dataset '{name}' (root {metadata['root']}) is already registered with split "
                f"{existing.get('split_params')}; cannot register it again with split "
                f"{metadata['split_params']}. Use another name."
            )
        logger.debug("Dataset '%s' is already registered with root %s; left unchanged", name, old_root)

    for name, loader, metadata in to_register:
        if name in MetadataCatalog:
            # Left over from a registration that was removed from DatasetCatalog only (or created by
            # a MetadataCatalog.get on an unknown name): Metadata refuses to change a value, so the
            # stale entry would make the new registration fail with an AssertionError.
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(
            ignore_label=IGNORE_LABEL,
            evaluator_type=EVALUATOR_TYPE,
            num_classes=len(metadata["stuff_classes"]),
            **metadata,
        )
        logger.debug("Registered dataset '%s' (root %s)", name, metadata["root"])
    return [name for name, _, _ in entries]


def unregister_datasets(names: Sequence[str]) -> None:
    """Remove datasets from both catalogs (tests, notebooks). Unknown names are ignored."""
    for name in names:
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)


def require_dir(path: Path, what: str) -> None:
    """Raise :class:`InputError` naming ``path`` unless it is an existing folder."""
    if not path.exists():
        hint = _nested_layout_hint(path)
        raise InputError(f"{what} {path} does not exist.{hint} See datasets/README.md for the expected layout.")
    if not path.is_dir():
        raise InputError(f"{what} {path} is not a folder.")


def _nested_layout_hint(missing: Path) -> str:
    """A hint for the most common layout mistake: the dataset's archive folder one level too deep
    (e.g. ``WORD/WORD-V0.1.0/imagesTr`` instead of ``WORD/imagesTr``)."""
    parent = missing.parent
    if not parent.is_dir():
        return ""
    nested = sorted(p for p in parent.iterdir() if p.is_dir() and (p / missing.name).exists())
    if nested:
        return f" Found {nested[0] / missing.name}: point the dataset root at {nested[0]}."
    return ""


def read_labels_json(json_path: Path, shown_as: Optional[str] = None) -> dict:
    """The JSON object of a dataset.json-like file with a ``labels`` entry (nnU-Net's layout), or an
    InputError naming the file (as ``shown_as``, e.g. the command-line flag that gave it)."""
    shown_as = shown_as or str(json_path)
    try:
        data = json.loads(Path(json_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{shown_as} is not a readable JSON file: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{shown_as} must contain a JSON object, not {type(data).__name__}.")
    if "labels" not in data:
        raise InputError(f"{shown_as} has no 'labels' entry (a mapping of class names to label values).")
    return data


def visible_files(folder: Path) -> List[Path]:
    """The files of ``folder``, sorted, without hidden ones."""
    # Hidden files are skipped: editors, macOS (.DS_Store) and S2VNet's own atomic writes
    # (temporary names start with a dot) put them next to the data.
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


# ------------------------------------------------------------------------------------------------
# dataset.json
# ------------------------------------------------------------------------------------------------
def parse_label_map(labels: Any, json_path: Path) -> Tuple[List[str], Optional[int]]:
    """Class names by label value from a dataset.json ``labels`` entry.

    Accepts nnU-Net v2's ``{name: value}`` and nnU-Net v1 / Decathlon's ``{"value": name}``. Values
    must be 0..K-1 without gaps or repeats (nnU-Net requires it, and S2VNet uses the value as class
    index). nnU-Net v2's ``"ignore"`` label (the largest value, marking unannotated voxels) is not a
    class: it is left out of the names and returned separately so that data preparation can map it
    to :data:`IGNORE_LABEL`.

    Returns:
        (class names with index 0 = "background", raw value of the ignore label or None)
    """
    if not isinstance(labels, Mapping) or not labels:
        raise InputError(f"{json_path}: 'labels' must be a non-empty mapping of class names to label values.")
    values = list(labels.values())
    ignore_value: Optional[int] = None
    if all(isinstance(v, str) for v in values):
        # v1 / Decathlon style: keys are the values.
        by_value: Dict[int, str] = {}
        for key, name in labels.items():
            try:
                value = int(key)
            except ValueError:
                raise InputError(
                    f"{json_path}: label key '{key}' is not an integer (labels given as {{value: name}})."
                ) from None
            if value in by_value:
                raise InputError(f"{json_path}: label value {value} is given twice ('{by_value[value]}', '{name}').")
            by_value[value] = name
        names_values = [(name, value) for value, name in by_value.items()]
    else:
        names_values = []
        for name, value in labels.items():
            if isinstance(value, (list, tuple)):
                raise InputError(
                    f"{json_path}: label '{name}' is a region ({value}); region-based nnU-Net datasets "
                    "are not supported."
                )
            # bool is an int subclass; `true` as a label value is a typo, not class 1.
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{json_path}: label '{name}' has value {value!r}; label values must be integers.")
            names_values.append((name, value))
        ignore = [v for n, v in names_values if n == NNUNET_IGNORE_KEY]
        if ignore:
            ignore_value = ignore[0]
            if ignore_value != max(v for _, v in names_values):
                raise InputError(
                    f"{json_path}: the 'ignore' label ({ignore_value}) must have the largest label value "
                    "(nnU-Net rule)."
                )
            names_values = [(n, v) for n, v in names_values if n != NNUNET_IGNORE_KEY]

    found = sorted(v for _, v in names_values)
    if found != list(range(len(found))):
        raise InputError(
            f"{json_path}: label values must be 0..K-1, each used once, without gaps (nnU-Net's rule, and "
            f"S2VNet uses them as class indices); got {found}."
        )
    names = [name for name, _ in sorted(names_values, key=lambda nv: nv[1])]
    if names[0] != "background":
        logger.warning("%s: label 0 is named '%s'; S2VNet calls it 'background'.", json_path, names[0])
        names[0] = "background"
    if len(names) < 2:
        raise InputError(f"{json_path}: 'labels' has no foreground class (only {names}).")
    return names, ignore_value


def load_dataset_json(root: PathLike) -> Dict[str, Any]:
    """Read and validate ``root/dataset.json`` of an nnU-Net raw dataset.

    Returns:
        dict with ``json_path`` (Path), ``stuff_classes`` (list[str]), ``raw_ignore_value`` (int or
        None), ``modality`` ("CT"/"MR"), ``channel_names`` (dict), ``file_ending`` (str).
    """
    root = absolute_path(root)
    require_dir(root, "nnU-Net dataset folder")
    json_path = root / "dataset.json"
    if not json_path.is_file():
        raise InputError(f"{json_path} does not exist: an nnU-Net raw dataset needs a dataset.json in {root}.")
    data = read_labels_json(json_path)
    stuff_classes, ignore_value = parse_label_map(data["labels"], json_path)

    # nnU-Net v2 calls it channel_names; v1 / Decathlon files call it modality.
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, Mapping) or "0" not in channels:
        raise InputError(
            f"{json_path} needs 'channel_names' with an entry \"0\" (e.g. {{\"0\": \"CT\"}}): it decides the "
            "intensity normalisation (CT window or MR percentiles)."
        )
    file_ending = data.get("file_ending", DEFAULT_FILE_ENDING)
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        raise InputError(f"{json_path}: 'file_ending' must be a string such as \".nii.gz\", got {file_ending!r}.")
    return {
        "json_path": json_path,
        "stuff_classes": stuff_classes,
        "raw_ignore_value": ignore_value,
        "modality": modality_from_channel_name(channels["0"]),
        "channel_names": dict(channels),
        "file_ending": file_ending,
    }


# ------------------------------------------------------------------------------------------------
# Listing and splitting cases
# ------------------------------------------------------------------------------------------------
def list_nnunet_cases(
    image_dir: Path, label_dir: Optional[Path], file_ending: str, labels_required: bool = True
) -> List[Tuple[str, Path, Optional[Path]]]:
    """(case id, channel-0 image, label or None) of every case in ``image_dir``, sorted by case id.

    Only channel 0000 is returned (S2VNet segments one channel). Raises :class:`InputError` for an
    image whose name lacks the ``_XXXX`` channel index, a case without channel 0000, a missing label
    when ``labels_required``, or a folder without images.
    """
    require_dir(image_dir, "Image folder")
    if label_dir is not None:
        require_dir(label_dir, "Label folder")
    channel0: Dict[str, Path] = {}
    other_channels: Dict[str, Path] = {}
    for path in visible_files(image_dir):
        if not path.name.endswith(file_ending):
            logger.debug("Skipping %s: it does not end with the dataset's file_ending %s", path, file_ending)
            continue
        match = _CHANNEL_RE.match(path.name[: -len(file_ending)])
        if match is None:
            raise InputError(
                f"{path}: nnU-Net image names end with a 4-digit channel index, e.g. "
                f"'case_0000{file_ending}' (rename the file, or convert the dataset to the nnU-Net layout)."
            )
        if match["channel"] == "0000":
            channel0[match["case"]] = path
        else:
            other_channels.setdefault(match["case"], path)
    missing0 = sorted(set(other_channels) - set(channel0))
    if missing0:
        raise InputError(
            f"{image_dir}: case(s) {missing0[:5]} have other channels (e.g. {other_channels[missing0[0]].name}) "
            f"but no channel 0000 image."
        )
    if not channel0:
        raise InputError(f"{image_dir} contains no images named '*_0000{file_ending}'.")

    cases = []
    for case in sorted(channel0):
        label = None
        if label_dir is not None:
            candidate = label_dir / f"{case}{file_ending}"
            if candidate.is_file():
                label = candidate
            elif labels_required:
                raise InputError(f"Image {channel0[case]} has no label: expected {candidate}.")
        cases.append((case, channel0[case], label))
    if label_dir is not None:
        orphans = sorted(
            p.name for p in visible_files(label_dir)
            if p.name.endswith(file_ending) and p.name[: -len(file_ending)] not in channel0
        )
        if orphans:
            logger.warning("%s: %d label(s) without an image are ignored, e.g. %s", label_dir, len(orphans), orphans[0])
    return cases


def split_train_val(
    case_ids: Sequence[str], val_cases: Optional[Sequence[str]], val_fraction: float, seed: int, where: PathLike
) -> Tuple[List[str], List[str]]:
    """Deterministic train/val split of ``case_ids``.

    ``val_cases`` (explicit ids) wins; otherwise ``round(n * val_fraction)`` cases (at least one when
    the fraction is positive) are drawn with ``random.Random(seed)`` from the sorted ids, so the split
    depends only on the set of cases, the fraction and the seed, not on file-system order.
    """
    ids = sorted(case_ids)
    if val_cases:
        unknown = sorted(set(val_cases) - set(ids))
        if unknown:
            raise InputError(f"{where}: validation case(s) {unknown} are not among its {len(ids)} training cases.")
        val = sorted(set(val_cases))
    elif val_fraction > 0:
        n_val = max(1, int(round(len(ids) * val_fraction)))
        if n_val >= len(ids):
            raise InputError(
                f"{where}: val_fraction {val_fraction} of {len(ids)} cases leaves no training case."
            )
        shuffled = list(ids)
        random.Random(seed).shuffle(shuffled)
        val = sorted(shuffled[:n_val])
    else:
        val = []
    val_set = set(val)
    return [c for c in ids if c not in val_set], val


def _load_nnunet_split(
    dataset_name: str,
    root: Path,
    split: str,
    file_ending: str,
    modality: str,
    val_cases: Tuple[str, ...],
    val_fraction: float,
    seed: int,
) -> List[dict]:
    """DatasetCatalog loader of one split ("train", "val" or "test") of an nnU-Net raw dataset."""
    require_dir(root, "nnU-Net dataset folder")
    if split == "test":
        label_dir = root / "labelsTs"
        cases = list_nnunet_cases(root / "imagesTs", label_dir if label_dir.is_dir() else None, file_ending)
    else:
        cases = list_nnunet_cases(root / "imagesTr", root / "labelsTr", file_ending)
        train, val = split_train_val([c for c, _, _ in cases], val_cases, val_fraction, seed, root)
        keep = set(train if split == "train" else val)
        cases = [c for c in cases if c[0] in keep]
    return [
        {
            "case_id": case,
            "image_file": str(image),
            "label_file": str(label) if label is not None else None,
            "modality": modality,
            "dataset_name": dataset_name,
        }
        for case, image, label in cases
    ]


# ------------------------------------------------------------------------------------------------
# Public registration function
# ------------------------------------------------------------------------------------------------
def register_nnunet_dataset(
    name: str,
    root: PathLike,
    val_cases: Optional[Sequence[str]] = None,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> List[str]:
    """Register an nnU-Net v2 raw dataset as ``{name}_train`` [, ``{name}_val``] [, ``{name}_test``].

    Args:
        name: prefix of the registered names.
        root: the dataset folder (the one holding dataset.json, imagesTr, labelsTr).
        val_cases: case ids (e.g. ``["liver_003"]``) held out of imagesTr as ``{name}_val``.
        val_fraction: alternatively, the fraction of imagesTr cases held out, drawn with ``seed``.
        seed: seed of the ``val_fraction`` draw.

    ``{name}_train`` holds the imagesTr cases not in validation; ``{name}_val`` is registered when
    ``val_cases`` or ``val_fraction`` is given; ``{name}_test`` when ``root/imagesTs`` exists (with
    labels from ``labelsTs`` if that folder exists). dataset.json is checked now; the image folders
    when a split is loaded. Registering the same name and root again is a no-op.

    Returns:
        The registered names.

    Raises:
        InputError: missing folder or dataset.json, invalid labels, bad split arguments, or ``name``
            already registered with another root.
    """
    if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
        raise InputError(f"Dataset name {name!r} must be a non-empty string without spaces.")
    if isinstance(val_cases, str):
        # A bare string is a Sequence of characters: almost certainly a single case id.
        raise InputError(f"val_cases for '{name}' must be a list of case ids, not the string {val_cases!r}.")
    val_cases = tuple(val_cases or ())
    if not 0.0 <= float(val_fraction) < 1.0:
        raise InputError(f"val_fraction for '{name}' must be in [0, 1), got {val_fraction}.")
    if val_cases and val_fraction > 0:
        raise InputError(f"Dataset '{name}': give either val_cases or val_fraction, not both.")

    root = absolute_path(root)
    info = load_dataset_json(root)
    require_dir(root / "imagesTr", "nnU-Net image folder")
    require_dir(root / "labelsTr", "nnU-Net label folder")
    if len(info["channel_names"]) > 1 and info["json_path"] not in _WARNED_MULTICHANNEL:
        _WARNED_MULTICHANNEL.add(info["json_path"])
        logger.warning(
            "%s declares %d channels %s; S2VNet uses only channel 0 (%s, files *_0000%s).",
            info["json_path"], len(info["channel_names"]), info["channel_names"],
            info["channel_names"]["0"], info["file_ending"],
        )

    splits = ["train"]
    if val_cases or val_fraction > 0:
        splits.append("val")
    if (root / "imagesTs").is_dir():
        splits.append("test")

    split_params = {
        "layout": "nnunet", "val_cases": list(val_cases), "val_fraction": float(val_fraction), "seed": int(seed)
    }
    entries = []
    for split in splits:
        dataset_name = f"{name}_{split}"
        loader = functools.partial(
            _load_nnunet_split, dataset_name, root, split, info["file_ending"], info["modality"],
            val_cases, float(val_fraction), int(seed),
        )
        metadata = {
            "stuff_classes": list(info["stuff_classes"]),
            # For user datasets the label names are the only sensible short names.
            "stuff_abbrev": list(info["stuff_classes"]),
            "modality": info["modality"],
            "root": str(root),
            "raw_ignore_value": info["raw_ignore_value"],
            "split_params": dict(split_params, split=split),
        }
        entries.append((dataset_name, loader, metadata))
    return register_volume_datasets(entries)
