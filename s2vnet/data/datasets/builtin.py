"""The paper's three benchmarks, WORD, BTCV and AMOS 2022, registered under fixed names.

================  ==========================================  =========================================
dataset           registered names                            folders (under the dataset's root)
================  ==========================================  =========================================
WORD (v0.1.0)     word_train, word_val, word_test (100/20/30)  imagesTr labelsTr imagesVal labelsVal
                                                              imagesTs labelsTs
BTCV              btcv_train, btcv_val (24/6, split file),     Training/img + Training/label (Synapse
                  btcv_all (every labelled case)              RawData), or imagesTr + labelsTr
AMOS 2022         amos_{ct,mr}_{train,val} and amos_train,     imagesTr labelsTr imagesVa labelsVa
                  amos_val (CT + MR): 200/100 CT, 40/20 MR    (dataset.json optional)
================  ==========================================  =========================================

:func:`register_builtin_datasets` expects them as ``ROOT/WORD``, ``ROOT/BTCV`` and ``ROOT/AMOS22``
(datasets/README.md). Registration only records names and paths: the folders are listed, and errors
raised, when a dataset is loaded, so registering all three costs nothing when only one is on disk.

Images may be named either as the datasets ship them (``word_0001.nii.gz``) or in the nnU-Net
convention (``word_0001_0000.nii.gz``); labels are ``{case}.nii.gz`` either way.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from s2vnet.data.intensity import AMOS_FIRST_MR_ID, amos_modality
from s2vnet.utils.errors import InputError

from .nnunet import (
    PathLike,
    absolute_path,
    parse_label_map,
    read_labels_json,
    register_nnunet_dataset,
    register_volume_datasets,
    require_dir,
    visible_files,
    volume_dataset_names,
)

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Class lists (index = label value in the released label volumes)
# ------------------------------------------------------------------------------------------------
WORD_CLASSES: Tuple[str, ...] = (
    "background", "liver", "spleen", "kidney_left", "kidney_right", "stomach", "gallbladder",
    "esophagus", "pancreas", "duodenum", "colon", "intestine", "adrenal", "rectum", "bladder",
    "head_of_femur_left", "head_of_femur_right",
)
# Column headers of the paper's Table 1.
WORD_ABBREV: Tuple[str, ...] = (
    "Bg", "Liv", "Spl", "Kid L", "Kid R", "Sto", "Gal", "Eso", "Pan", "Duo", "Col", "Int", "Adr",
    "Rec", "Bla", "Fem L", "Fem R",
)

BTCV_CLASSES: Tuple[str, ...] = (
    "background", "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver",
    "stomach", "aorta", "inferior_vena_cava", "portal_and_splenic_vein", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left",
)
# Table 2 of the paper uses Gal, Eso, IVC, PSV, RAG, LAG; the others follow Table 1's style.
BTCV_ABBREV: Tuple[str, ...] = (
    "Bg", "Spl", "Kid R", "Kid L", "Gal", "Eso", "Liv", "Sto", "Aor", "IVC", "PSV", "Pan", "RAG", "LAG",
)

AMOS_CLASSES: Tuple[str, ...] = (
    "background", "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver",
    "stomach", "aorta", "postcava", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
    "duodenum", "bladder", "prostate_uterus",
)
AMOS_ABBREV: Tuple[str, ...] = (
    "Bg", "Spl", "Kid R", "Kid L", "Gal", "Eso", "Liv", "Sto", "Aor", "IVC", "Pan", "RAG", "LAG",
    "Duo", "Bla", "Pro/Ute",
)

#: Folder of each benchmark under the datasets root (register_builtin_datasets, datasets/README.md).
BUILTIN_FOLDERS: Dict[str, str] = {"word": "WORD", "btcv": "BTCV", "amos": "AMOS22"}

#: AMOS case ids below this are CT, the others MR (the convention of AMOS's readme and tools).

_WORD_FOLDERS = {"train": ("imagesTr", "labelsTr"), "val": ("imagesVal", "labelsVal"), "test": ("imagesTs", "labelsTs")}
_AMOS_FOLDERS = {"train": ("imagesTr", "labelsTr"), "val": ("imagesVa", "labelsVa")}
# Sizes of the official releases: a different count is allowed (subsets for debugging) but is
# worth a warning, since published numbers are only comparable on the full splits.
_WORD_COUNTS = {"train": 100, "val": 20, "test": 30}
_AMOS_COUNTS = {("train", "CT"): 200, ("train", "MR"): 40, ("val", "CT"): 100, ("val", "MR"): 20}

_SPLIT_DIR = Path(__file__).resolve().parent / "splits"
_NII = ".nii.gz"
_DIGITS = re.compile(r"(\d+)")


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def _list_plain_cases(image_dir: Path, label_dir: Path) -> List[Tuple[str, Path, Path]]:
    """(case id, image, label) of every image in ``image_dir``, sorted; labels required.

    An image ``X.nii.gz`` or ``X_0000.nii.gz`` pairs with the label ``X.nii.gz``.
    """
    require_dir(image_dir, "Image folder")
    require_dir(label_dir, "Label folder")
    cases: Dict[str, Tuple[Path, Path]] = {}
    for image in visible_files(image_dir):
        if not image.name.endswith(_NII):
            continue
        stem = image.name[: -len(_NII)]
        # The label of the full stem first: in "word_0001" the "_0001" is a case number, not a channel.
        case = stem
        if not (label_dir / f"{stem}{_NII}").is_file() and stem.endswith("_0000"):
            case = stem[: -len("_0000")]
        label = label_dir / f"{case}{_NII}"
        if not label.is_file():
            expected = f"{label_dir / (stem + _NII)}"
            if stem.endswith("_0000"):
                expected += f" or {label_dir / (stem[: -len('_0000')] + _NII)}"
            raise InputError(f"Image {image} has no label: expected {expected}.")
        if case in cases:
            raise InputError(f"{image_dir}: case '{case}' has two images, {cases[case][0].name} and {image.name}.")
        cases[case] = (image, label)
    if not cases:
        raise InputError(f"{image_dir} contains no '*{_NII}' images.")
    return [(case, image, label) for case, (image, label) in sorted(cases.items())]


def _volume_dict(case: str, image: Path, label: Optional[Path], modality: str, dataset_name: str) -> dict:
    return {
        "case_id": case,
        "image_file": str(image),
        "label_file": str(label) if label is not None else None,
        "modality": modality,
        "dataset_name": dataset_name,
    }


def _warn_count(dataset_name: str, found: int, expected: int, where: Path) -> None:
    if found != expected:
        logger.warning(
            "%s: %d volumes in %s, the official split has %d; results are not comparable with published ones.",
            dataset_name, found, where, expected,
        )


def _metadata(
    root: Path, classes: Sequence[str], abbrev: Sequence[str], modality: str, layout: str, split: str
) -> Dict[str, Any]:
    return {
        "stuff_classes": list(classes),
        "stuff_abbrev": list(abbrev),
        "modality": modality,
        "root": str(root),
        "raw_ignore_value": None,
        "split_params": {"layout": layout, "split": split},
    }


def _register_ct_splits(
    layout: str, root: Path, splits: Sequence[str], load: Callable[[str, Path, str], List[dict]],
    classes: Sequence[str], abbrev: Sequence[str],
) -> List[str]:
    """Register ``{layout}_{split}`` for each split of a CT benchmark; ``load(name, root, split)``
    lists the split's volumes when it is first loaded."""
    entries = []
    for split in splits:
        name = f"{layout}_{split}"
        entries.append((name, functools.partial(load, name, root, split), _metadata(root, classes, abbrev, "CT", layout, split)))
    return register_volume_datasets(entries)


# ------------------------------------------------------------------------------------------------
# WORD
# ------------------------------------------------------------------------------------------------
def _load_word(dataset_name: str, root: Path, split: str) -> List[dict]:
    require_dir(root, "WORD dataset folder")
    image_folder, label_folder = _WORD_FOLDERS[split]
    cases = _list_plain_cases(root / image_folder, root / label_folder)
    _warn_count(dataset_name, len(cases), _WORD_COUNTS[split], root / image_folder)
    return [_volume_dict(case, image, label, "CT", dataset_name) for case, image, label in cases]


def register_word(root: PathLike) -> List[str]:
    """Register WORD (v0.1.0 layout) under ``root`` as word_train / word_val / word_test.

    Nothing is read now; loading a split lists its folders and raises :class:`InputError` if they
    are missing, empty or have images without labels.
    """
    return _register_ct_splits("word", absolute_path(root), ("train", "val", "test"), _load_word, WORD_CLASSES, WORD_ABBREV)


# ------------------------------------------------------------------------------------------------
# BTCV
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def load_btcv_split() -> Dict[str, Tuple[str, ...]]:
    """The shipped 24/6 BTCV split (``splits/btcv.json``): {"train": case ids, "val": case ids}."""
    path = _SPLIT_DIR / "btcv.json"
    data = json.loads(path.read_text())
    split = {"train": tuple(data["train"]), "val": tuple(data["val"])}
    # A corrupt split file would silently train on validation cases; check it like user input.
    if set(split["train"]) & set(split["val"]):
        raise InputError(f"{path}: train and val share cases {sorted(set(split['train']) & set(split['val']))}.")
    return split


def btcv_case_id(number: int) -> str:
    """Canonical BTCV case id, independent of the file naming of the layout: 1 -> "btcv_0001"."""
    return f"btcv_{number:04d}"


def _btcv_number(path: Path) -> int:
    """The BTCV case number in a file name: img0001 / label0001 (Synapse), img0001_0000 (nnU-Net's
    conversion), BTCV_0001 ... -> 1."""
    stem = path.name[: -len(_NII)]
    if stem.endswith("_0000") and _DIGITS.search(stem[: -len("_0000")]):
        stem = stem[: -len("_0000")]
    numbers = _DIGITS.findall(stem)
    if not numbers:
        raise InputError(f"{path}: cannot read a BTCV case number from the file name.")
    return int(numbers[-1])


def _btcv_folders(root: Path) -> Tuple[Path, Path]:
    """(image folder, label folder) of whichever supported layout ``root`` has."""
    require_dir(root, "BTCV dataset folder")
    candidates = [
        (root / "imagesTr", root / "labelsTr"),
        (root / "Training" / "img", root / "Training" / "label"),
        (root / "RawData" / "Training" / "img", root / "RawData" / "Training" / "label"),
    ]
    for image_dir, label_dir in candidates:
        if image_dir.is_dir():
            require_dir(label_dir, "BTCV label folder")
            return image_dir, label_dir
    raise InputError(
        f"BTCV dataset folder {root} has neither imagesTr/ + labelsTr/ (nnU-Net or MONAI layout) nor "
        "Training/img/ + Training/label/ (Synapse RawData layout). See datasets/README.md."
    )


def _numbered_files(folder: Path) -> Dict[int, Path]:
    files: Dict[int, Path] = {}
    for path in visible_files(folder):
        if not path.name.endswith(_NII):
            continue
        number = _btcv_number(path)
        if number in files:
            raise InputError(f"{folder}: BTCV case {number} has two files, {files[number].name} and {path.name}.")
        files[number] = path
    return files


def _load_btcv(dataset_name: str, root: Path, split: str) -> List[dict]:
    image_dir, label_dir = _btcv_folders(root)
    images, labels = _numbered_files(image_dir), _numbered_files(label_dir)
    if not images:
        raise InputError(f"{image_dir} contains no '*{_NII}' images.")
    for number, image in sorted(images.items()):
        if number not in labels:
            raise InputError(f"Image {image} has no label in {label_dir} (case number {number}).")
    by_id = {btcv_case_id(n): (images[n], labels[n]) for n in images}

    if split == "all":
        case_ids = sorted(by_id)
    else:
        case_ids = list(load_btcv_split()[split])
        missing = [c for c in case_ids if c not in by_id]
        if missing:
            raise InputError(
                f"{image_dir}: the BTCV {split} split needs case(s) {missing}, which are not there "
                f"(found {len(by_id)} labelled cases)."
            )
    return [_volume_dict(c, by_id[c][0], by_id[c][1], "CT", dataset_name) for c in case_ids]


def register_btcv(root: PathLike) -> List[str]:
    """Register BTCV under ``root`` as btcv_train / btcv_val (the shipped 24/6 split) / btcv_all.

    Accepts the Synapse RawData layout (``Training/img/img0001.nii.gz``, ``Training/label/
    label0001.nii.gz``, optionally below ``RawData/``) and converted layouts with ``imagesTr`` /
    ``labelsTr`` (nnU-Net: ``img0001_0000.nii.gz``; MONAI: ``img0001.nii.gz`` + ``label0001.nii.gz``).
    Case ids are ``btcv_0001`` ... whatever the layout, so prepared caches and reports do not
    depend on it. Nothing is read now.
    """
    return _register_ct_splits("btcv", absolute_path(root), ("train", "val", "all"), _load_btcv, BTCV_CLASSES, BTCV_ABBREV)


# ------------------------------------------------------------------------------------------------
# AMOS 2022
# ------------------------------------------------------------------------------------------------
def _check_amos_json(root: Path) -> None:
    """If AMOS's dataset.json is there, make sure it is AMOS's: 16 labels (background + 15 organs)."""
    json_path = root / "dataset.json"
    if not json_path.is_file():
        return
    names, _ = parse_label_map(read_labels_json(json_path)["labels"], json_path)
    if len(names) != len(AMOS_CLASSES):
        raise InputError(
            f"{json_path} declares {len(names)} labels; AMOS 2022 has {len(AMOS_CLASSES)} "
            "(background + 15 organs). Is this the amos22 folder?"
        )


def _load_amos(dataset_name: str, root: Path, split: str, modality: Optional[str]) -> List[dict]:
    require_dir(root, "AMOS dataset folder")
    _check_amos_json(root)
    image_folder, label_folder = _AMOS_FOLDERS[split]
    volumes = []
    for case, image, label in _list_plain_cases(root / image_folder, root / label_folder):
        case_modality = amos_modality(case)
        if modality is None or case_modality == modality:
            volumes.append(_volume_dict(case, image, label, case_modality, dataset_name))
    if not volumes:
        ids = f"ids < {AMOS_FIRST_MR_ID}" if modality == "CT" else f"ids >= {AMOS_FIRST_MR_ID}"
        raise InputError(f"{root / image_folder} contains no {modality} cases ({ids}).")
    modalities = [modality] if modality else ["CT", "MR"]
    _warn_count(dataset_name, len(volumes), sum(_AMOS_COUNTS[(split, m)] for m in modalities), root / image_folder)
    return volumes


def register_amos(root: PathLike) -> List[str]:
    """Register AMOS 2022 (amos22 layout) under ``root``.

    Names: amos_ct_train, amos_ct_val, amos_mr_train, amos_mr_val (one modality each) and
    amos_train, amos_val (both; metadata modality "mixed", each volume dict still says CT or MR).
    Nothing is read now.
    """
    root = absolute_path(root)
    entries = []
    for modality, tag in (("CT", "ct_"), ("MR", "mr_"), (None, "")):
        for split in ("train", "val"):
            name = f"amos_{tag}{split}"
            entries.append((name, functools.partial(_load_amos, name, root, split, modality),
                            _metadata(root, AMOS_CLASSES, AMOS_ABBREV, modality or "mixed", "amos", split)))
    return register_volume_datasets(entries)


# ------------------------------------------------------------------------------------------------
# All builtins, and the config entry point
# ------------------------------------------------------------------------------------------------
def register_builtin_datasets(root: PathLike) -> List[str]:
    """Register WORD, BTCV and AMOS found at ``root/WORD``, ``root/BTCV``, ``root/AMOS22``.

    Cheap: no folder is read until a dataset is loaded, so missing datasets only matter if used.
    """
    root = absolute_path(root)
    return (
        register_word(root / BUILTIN_FOLDERS["word"])
        + register_btcv(root / BUILTIN_FOLDERS["btcv"])
        + register_amos(root / BUILTIN_FOLDERS["amos"])
    )


def _parse_nnunet_entry(entry: Any) -> Tuple[str, str]:
    if not isinstance(entry, str) or "=" not in entry:
        raise InputError(f"DATASETS.NNUNET entry {entry!r} is not of the form 'name=path/to/DatasetXXX_Name'.")
    name, path = (part.strip() for part in entry.split("=", 1))
    if not name or not path:
        raise InputError(f"DATASETS.NNUNET entry {entry!r} is not of the form 'name=path/to/DatasetXXX_Name'.")
    return name, path


def register_datasets_from_config(cfg: Any) -> List[str]:
    """Register the datasets a config asks for and check that DATASETS.TRAIN / TEST exist.

    Reads ``cfg.DATASETS.ROOT`` (root of the builtin datasets; empty: none), ``cfg.DATASETS.NNUNET``
    (list of ``"name=path"``, each registered with :func:`register_nnunet_dataset`) and
    ``cfg.DATASETS.NNUNET_VAL_FRACTION`` (their validation fraction, default 0). Missing keys are
    treated as their defaults.

    Returns:
        All names registered (or already registered) by this call.

    Raises:
        InputError: a malformed entry, a bad nnU-Net folder, or a TRAIN / TEST name that is not a
            registered S2VNet volume dataset (the message lists those that are).
    """
    datasets_cfg = cfg.DATASETS
    names: List[str] = []
    root = getattr(datasets_cfg, "ROOT", "") or ""
    if root:
        names += register_builtin_datasets(root)

    entries = getattr(datasets_cfg, "NNUNET", ()) or ()
    if isinstance(entries, str):
        # A single entry given on the command line without list brackets.
        entries = [entries]
    val_fraction = float(getattr(datasets_cfg, "NNUNET_VAL_FRACTION", 0.0) or 0.0)
    for entry in entries:
        name, path = _parse_nnunet_entry(entry)
        names += register_nnunet_dataset(name, path, val_fraction=val_fraction)

    available = volume_dataset_names()
    for key in ("TRAIN", "TEST"):
        for name in getattr(datasets_cfg, key, ()) or ():
            if name not in available:
                raise InputError(
                    f"DATASETS.{key} names '{name}', which is not a registered S2VNet dataset. "
                    f"Registered: {', '.join(available) or 'none'}. Set DATASETS.ROOT for WORD/BTCV/AMOS "
                    "or add 'name=path' to DATASETS.NNUNET for an nnU-Net raw dataset."
                )
    return names
