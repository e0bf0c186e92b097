"""Dataset registration: nnU-Net raw datasets, WORD, BTCV, AMOS, config entry point, bad input.

Registration never reads voxels, so the fake datasets here are empty files with the right names.
"""
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from s2vnet.data.datasets import (
    AMOS_CLASSES,
    BTCV_CLASSES,
    WORD_ABBREV,
    WORD_CLASSES,
    load_btcv_split,
    modality_from_channel_name,
    register_amos,
    register_btcv,
    register_builtin_datasets,
    register_datasets_from_config,
    register_nnunet_dataset,
    register_word,
)
from s2vnet.utils.errors import InputError

LABELS = {"background": 0, "liver": 1, "spleen": 2}
BTCV_NUMBERS = list(range(1, 11)) + list(range(21, 41))  # the 30 labelled Synapse cases
DICT_KEYS = {"case_id", "image_file", "label_file", "modality", "dataset_name"}


@pytest.fixture(autouse=True)
def clean_catalogs():
    """Every test starts and ends with the catalogs it found (builtin names are global)."""
    datasets_before, metadata_before = set(DatasetCatalog.list()), set(MetadataCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - datasets_before:
        DatasetCatalog.remove(name)
    for name in set(MetadataCatalog.list()) - metadata_before:
        MetadataCatalog.remove(name)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_nnunet(
    root: Path,
    cases: Iterable[str],
    labels: Optional[Dict] = None,
    channels: Optional[Dict[str, str]] = None,
    test_cases: Iterable[str] = (),
    test_labels: bool = False,
) -> Path:
    channels = channels or {"0": "CT"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": channels, "labels": labels or LABELS, "file_ending": ".nii.gz", "numTraining": 0}
    ))
    (root / "imagesTr").mkdir(exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for case in cases:
        for channel in range(len(channels)):
            touch(root / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        touch(root / "labelsTr" / f"{case}.nii.gz")
    for case in test_cases:
        touch(root / "imagesTs" / f"{case}_0000.nii.gz")
        if test_labels:
            touch(root / "labelsTs" / f"{case}.nii.gz")
    return root


def case_ids(name: str) -> List[str]:
    return [d["case_id"] for d in DatasetCatalog.get(name)]


# ------------------------------------------------------------------------------------------------
# Generic nnU-Net datasets
# ------------------------------------------------------------------------------------------------
def test_nnunet_train_dicts_and_metadata(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_Toy", ["toy_003", "toy_001", "toy_002"])
    assert register_nnunet_dataset("toy", root) == ["toy_train"]

    dicts = DatasetCatalog.get("toy_train")
    assert [d["case_id"] for d in dicts] == ["toy_001", "toy_002", "toy_003"]
    first = dicts[0]
    assert set(first) == DICT_KEYS
    assert first["image_file"] == str(root / "imagesTr" / "toy_001_0000.nii.gz")
    assert first["label_file"] == str(root / "labelsTr" / "toy_001.nii.gz")
    assert Path(first["image_file"]).is_absolute()
    assert (first["modality"], first["dataset_name"]) == ("CT", "toy_train")

    meta = MetadataCatalog.get("toy_train")
    assert meta.stuff_classes == ["background", "liver", "spleen"]
    assert meta.stuff_abbrev == meta.stuff_classes
    assert meta.num_classes == 3
    assert meta.ignore_label == 255
    assert meta.modality == "CT"
    assert meta.root == str(root)
    assert meta.evaluator_type == "volume"


def test_nnunet_val_fraction_is_deterministic_and_disjoint(tmp_path):
    cases = [f"c_{i:03d}" for i in range(10)]
    root_a = make_nnunet(tmp_path / "a", cases)
    root_b = make_nnunet(tmp_path / "b", list(reversed(cases)))  # other creation order
    assert register_nnunet_dataset("split_a", root_a, val_fraction=0.3, seed=7) == ["split_a_train", "split_a_val"]
    register_nnunet_dataset("split_b", root_b, val_fraction=0.3, seed=7)

    train, val = case_ids("split_a_train"), case_ids("split_a_val")
    assert len(val) == 3 and len(train) == 7
    assert sorted(train + val) == cases
    assert (case_ids("split_b_train"), case_ids("split_b_val")) == (train, val)
    assert case_ids("split_a_val") == val  # loading again gives the same split

    # The seed matters: among a few other seeds at least one draws a different validation set.
    other_vals = []
    for seed in range(5):
        register_nnunet_dataset(f"seed{seed}", root_a, val_fraction=0.3, seed=seed)
        other_vals.append(case_ids(f"seed{seed}_val"))
    assert any(v != val for v in other_vals)


def test_nnunet_explicit_val_cases(tmp_path):
    root = make_nnunet(tmp_path / "ds", ["a_1", "a_2", "a_3"])
    register_nnunet_dataset("explicit", root, val_cases=["a_2"])
    assert case_ids("explicit_val") == ["a_2"]
    assert case_ids("explicit_train") == ["a_1", "a_3"]

    register_nnunet_dataset("unknown_val", root, val_cases=["a_9"])
    with pytest.raises(InputError, match="a_9") as err:
        DatasetCatalog.get("unknown_val_train")
    assert str(root) in str(err.value)


def test_nnunet_test_split_with_and_without_labels(tmp_path):
    no_ts = make_nnunet(tmp_path / "no_ts", ["x_1"])
    assert register_nnunet_dataset("nots", no_ts) == ["nots_train"]

    unlabelled = make_nnunet(tmp_path / "ts", ["x_1"], test_cases=["t_1", "t_2"])
    assert register_nnunet_dataset("ts", unlabelled) == ["ts_train", "ts_test"]
    dicts = DatasetCatalog.get("ts_test")
    assert [d["case_id"] for d in dicts] == ["t_1", "t_2"]
    assert all(d["label_file"] is None for d in dicts)

    labelled = make_nnunet(tmp_path / "tsl", ["x_1"], test_cases=["t_1"], test_labels=True)
    register_nnunet_dataset("tsl", labelled)
    assert DatasetCatalog.get("tsl_test")[0]["label_file"] == str(labelled / "labelsTs" / "t_1.nii.gz")


def test_nnunet_multichannel_uses_channel0_and_warns_once(tmp_path, caplog):
    root = make_nnunet(tmp_path / "prostate", ["p_1", "p_2"], channels={"0": "T2", "1": "ADC"})
    with caplog.at_level(logging.WARNING, logger="s2vnet.data.datasets"):
        register_nnunet_dataset("prostate", root)
        register_nnunet_dataset("prostate_again", root)
        dicts = DatasetCatalog.get("prostate_train")
    warnings = [r for r in caplog.records if "channel" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(root / "dataset.json") in warnings[0].getMessage()
    assert [Path(d["image_file"]).name for d in dicts] == ["p_1_0000.nii.gz", "p_2_0000.nii.gz"]
    assert {d["modality"] for d in dicts} == {"MR"}
    assert MetadataCatalog.get("prostate_train").modality == "MR"


@pytest.mark.parametrize("channel, modality", [
    ("CT", "CT"), ("ct", "CT"), (" Ct ", "CT"), ("MRI", "MR"), ("T2", "MR"), ("noNorm", "MR"),
])
def test_modality_from_channel_name(channel, modality):
    assert modality_from_channel_name(channel) == modality


def test_lowercase_ct_channel_registers_as_ct(tmp_path):
    root = make_nnunet(tmp_path / "lower", ["l_1"], channels={"0": "ct"})
    register_nnunet_dataset("lower", root)
    assert DatasetCatalog.get("lower_train")[0]["modality"] == "CT"
    assert MetadataCatalog.get("lower_train").modality == "CT"


def test_nnunet_v1_style_labels_and_ignore_label(tmp_path):
    msd = make_nnunet(tmp_path / "msd", ["m_1"], labels={"0": "bg", "2": "tumour", "1": "organ"})
    register_nnunet_dataset("msd", msd)
    assert MetadataCatalog.get("msd_train").stuff_classes == ["background", "organ", "tumour"]

    partial = make_nnunet(tmp_path / "partial", ["p_1"], labels={"background": 0, "organ": 1, "ignore": 2})
    register_nnunet_dataset("partial", partial)
    meta = MetadataCatalog.get("partial_train")
    assert meta.stuff_classes == ["background", "organ"]
    assert meta.num_classes == 2
    assert meta.raw_ignore_value == 2


# ------------------------------------------------------------------------------------------------
# Bad input: every error names the offending file or folder
# ------------------------------------------------------------------------------------------------
def test_missing_root_folder(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(InputError, match=str(missing)):
        register_nnunet_dataset("missing", missing)
    assert "missing_train" not in DatasetCatalog


def test_missing_dataset_json(tmp_path):
    root = make_nnunet(tmp_path / "nojson", ["n_1"])
    (root / "dataset.json").unlink()
    with pytest.raises(InputError, match=str(root / "dataset.json")):
        register_nnunet_dataset("nojson", root)


def test_unreadable_dataset_json(tmp_path):
    root = make_nnunet(tmp_path / "badjson", ["n_1"])
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match=str(root / "dataset.json")):
        register_nnunet_dataset("badjson", root)


@pytest.mark.parametrize("labels", [
    {"background": 0, "liver": 1, "spleen": 3},       # gap
    {"background": 0, "liver": 1, "spleen": 1},       # repeated value
    {"liver": 1, "spleen": 2},                        # no 0
    {"background": 0, "tumour": [1, 2]},              # nnU-Net region
    {"background": 0, "liver": "1"},                  # mixed styles
])
def test_bad_labels(tmp_path, labels):
    root = make_nnunet(tmp_path / "badlabels", ["b_1"], labels=labels)
    with pytest.raises(InputError, match="dataset.json"):
        register_nnunet_dataset("badlabels", root)
    assert "badlabels_train" not in DatasetCatalog


def test_missing_channel_names(tmp_path):
    root = make_nnunet(tmp_path / "nochan", ["n_1"])
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    with pytest.raises(InputError, match="channel_names"):
        register_nnunet_dataset("nochan", root)


def test_image_without_label(tmp_path):
    root = make_nnunet(tmp_path / "nolabel", ["ok_1", "bad_2"])
    (root / "labelsTr" / "bad_2.nii.gz").unlink()
    register_nnunet_dataset("nolabel", root)  # lazy: folders are not listed yet
    with pytest.raises(InputError, match=str(root / "imagesTr" / "bad_2_0000.nii.gz")):
        DatasetCatalog.get("nolabel_train")


def test_empty_image_folder(tmp_path):
    root = make_nnunet(tmp_path / "empty", [])
    register_nnunet_dataset("empty", root)
    with pytest.raises(InputError, match=str(root / "imagesTr")):
        DatasetCatalog.get("empty_train")


def test_image_without_channel_suffix(tmp_path):
    root = make_nnunet(tmp_path / "nosuffix", ["s_1"])
    touch(root / "imagesTr" / "plain.nii.gz")
    register_nnunet_dataset("nosuffix", root)
    with pytest.raises(InputError, match=str(root / "imagesTr" / "plain.nii.gz")):
        DatasetCatalog.get("nosuffix_train")


def test_reregistration_same_root_is_noop_other_root_fails(tmp_path):
    first = make_nnunet(tmp_path / "first", ["f_1"])
    second = make_nnunet(tmp_path / "second", ["s_1"])
    assert register_nnunet_dataset("rereg", first) == ["rereg_train"]
    loader = DatasetCatalog["rereg_train"]
    assert register_nnunet_dataset("rereg", first) == ["rereg_train"]
    assert DatasetCatalog["rereg_train"] is loader  # untouched

    with pytest.raises(InputError) as err:
        register_nnunet_dataset("rereg", second)
    assert str(first) in str(err.value) and str(second) in str(err.value)
    assert case_ids("rereg_train") == ["f_1"]

    with pytest.raises(InputError, match="split"):
        register_nnunet_dataset("rereg", first, val_fraction=0.5)


def test_conflict_registers_nothing(tmp_path):
    """A conflict on one split must not leave the other splits registered."""
    root = make_nnunet(tmp_path / "atomic", ["a_1", "a_2"], test_cases=["t_1"])
    other = make_nnunet(tmp_path / "other", ["o_1"])
    register_nnunet_dataset("atomic", other)  # takes atomic_train
    with pytest.raises(InputError):
        register_nnunet_dataset("atomic", root)
    assert "atomic_test" not in DatasetCatalog


def test_stale_metadata_does_not_block_registration(tmp_path):
    first = make_nnunet(tmp_path / "first", ["f_1"])
    second = make_nnunet(tmp_path / "second", ["s_1"])
    register_nnunet_dataset("stale", first)
    DatasetCatalog.remove("stale_train")  # metadata left behind, root=first
    register_nnunet_dataset("stale", second)
    assert MetadataCatalog.get("stale_train").root == str(second)


def test_bad_split_arguments(tmp_path):
    root = make_nnunet(tmp_path / "args", ["a_1", "a_2"])
    with pytest.raises(InputError):
        register_nnunet_dataset("args", root, val_fraction=1.0)
    with pytest.raises(InputError):
        register_nnunet_dataset("args", root, val_cases=["a_1"], val_fraction=0.5)
    with pytest.raises(InputError):
        register_nnunet_dataset("args", root, val_cases="a_1")
    register_nnunet_dataset("toomany", root, val_fraction=0.9)
    with pytest.raises(InputError, match=str(root)):
        DatasetCatalog.get("toomany_val")


# ------------------------------------------------------------------------------------------------
# WORD
# ------------------------------------------------------------------------------------------------
def make_word(root: Path, nnunet_names: bool = False) -> Path:
    splits = {"Tr": ["word_0002", "word_0003", "word_0005"], "Val": ["word_0001", "word_0004"], "Ts": ["word_0010"]}
    for suffix, cases in splits.items():
        for case in cases:
            touch(root / f"images{suffix}" / (f"{case}_0000.nii.gz" if nnunet_names else f"{case}.nii.gz"))
            touch(root / f"labels{suffix}" / f"{case}.nii.gz")
    return root


@pytest.mark.parametrize("nnunet_names", [False, True])
def test_word(tmp_path, nnunet_names):
    root = make_word(tmp_path / "WORD", nnunet_names)
    assert register_word(root) == ["word_train", "word_val", "word_test"]
    assert case_ids("word_train") == ["word_0002", "word_0003", "word_0005"]
    assert case_ids("word_val") == ["word_0001", "word_0004"]
    test = DatasetCatalog.get("word_test")
    assert test == [{
        "case_id": "word_0010",
        "image_file": str(root / "imagesTs" / ("word_0010_0000.nii.gz" if nnunet_names else "word_0010.nii.gz")),
        "label_file": str(root / "labelsTs" / "word_0010.nii.gz"),
        "modality": "CT",
        "dataset_name": "word_test",
    }]
    meta = MetadataCatalog.get("word_val")
    assert meta.stuff_classes == list(WORD_CLASSES)
    assert meta.num_classes == 17
    assert meta.stuff_classes[1] == "liver" and meta.stuff_classes[16] == "head_of_femur_right"
    assert meta.stuff_abbrev == list(WORD_ABBREV) and meta.stuff_abbrev[1:4] == ["Liv", "Spl", "Kid L"]
    assert (meta.ignore_label, meta.modality, meta.root, meta.evaluator_type) == (255, "CT", str(root), "volume")


def test_word_missing_label(tmp_path):
    root = make_word(tmp_path / "WORD")
    (root / "labelsVal" / "word_0004.nii.gz").unlink()
    register_word(root)
    with pytest.raises(InputError, match=str(root / "imagesVal" / "word_0004.nii.gz")):
        DatasetCatalog.get("word_val")


def test_word_nested_archive_folder_hint(tmp_path):
    make_word(tmp_path / "WORD" / "WORD-V0.1.0")
    register_word(tmp_path / "WORD")
    with pytest.raises(InputError, match="WORD-V0.1.0"):
        DatasetCatalog.get("word_train")


# ------------------------------------------------------------------------------------------------
# BTCV
# ------------------------------------------------------------------------------------------------
def make_btcv_synapse(root: Path) -> Path:
    for n in BTCV_NUMBERS:
        touch(root / "Training" / "img" / f"img{n:04d}.nii.gz")
        touch(root / "Training" / "label" / f"label{n:04d}.nii.gz")
    return root


def make_btcv_nnunet(root: Path) -> Path:
    for n in BTCV_NUMBERS:
        touch(root / "imagesTr" / f"img{n:04d}_0000.nii.gz")
        touch(root / "labelsTr" / f"img{n:04d}.nii.gz")
    return root


def test_btcv_split_file_is_24_6_standard():
    split = load_btcv_split()
    assert len(split["train"]) == 24 and len(split["val"]) == 6
    assert not set(split["train"]) & set(split["val"])
    assert sorted(split["train"] + split["val"]) == [f"btcv_{n:04d}" for n in BTCV_NUMBERS]
    assert list(split["val"]) == [f"btcv_{n:04d}" for n in range(35, 41)]


@pytest.mark.parametrize("make, image_name, label_name", [
    (make_btcv_synapse, "Training/img/img0035.nii.gz", "Training/label/label0035.nii.gz"),
    (make_btcv_nnunet, "imagesTr/img0035_0000.nii.gz", "labelsTr/img0035.nii.gz"),
])
def test_btcv_layouts(tmp_path, make, image_name, label_name):
    root = make(tmp_path / "BTCV")
    assert register_btcv(root) == ["btcv_train", "btcv_val", "btcv_all"]
    train, val = case_ids("btcv_train"), case_ids("btcv_val")
    assert (len(train), len(val), len(case_ids("btcv_all"))) == (24, 6, 30)
    assert train == list(load_btcv_split()["train"]) and val == list(load_btcv_split()["val"])
    first_val = DatasetCatalog.get("btcv_val")[0]
    assert first_val["case_id"] == "btcv_0035"
    assert first_val["image_file"] == str(root / image_name)
    assert first_val["label_file"] == str(root / label_name)
    assert first_val["modality"] == "CT"
    meta = MetadataCatalog.get("btcv_train")
    assert meta.stuff_classes == list(BTCV_CLASSES) and meta.num_classes == 14
    assert meta.stuff_classes[9] == "inferior_vena_cava" and meta.stuff_abbrev[9] == "IVC"


def test_btcv_synapse_layout_below_rawdata(tmp_path):
    make_btcv_synapse(tmp_path / "BTCV" / "RawData")
    register_btcv(tmp_path / "BTCV")
    assert len(case_ids("btcv_val")) == 6


def test_btcv_missing_split_case(tmp_path):
    root = make_btcv_synapse(tmp_path / "BTCV")
    (root / "Training" / "img" / "img0037.nii.gz").unlink()
    (root / "Training" / "label" / "label0037.nii.gz").unlink()
    register_btcv(root)
    assert len(case_ids("btcv_train")) == 24
    with pytest.raises(InputError, match="btcv_0037") as err:
        DatasetCatalog.get("btcv_val")
    assert str(root / "Training" / "img") in str(err.value)


def test_btcv_unknown_layout(tmp_path):
    (tmp_path / "BTCV" / "somewhere").mkdir(parents=True)
    register_btcv(tmp_path / "BTCV")
    with pytest.raises(InputError, match=str(tmp_path / "BTCV")):
        DatasetCatalog.get("btcv_all")


# ------------------------------------------------------------------------------------------------
# AMOS
# ------------------------------------------------------------------------------------------------
def make_amos(root: Path, n_labels: int = 16) -> Path:
    splits = (("Tr", ["amos_0001", "amos_0004", "amos_0507", "amos_0600"]), ("Va", ["amos_0008", "amos_0510"]))
    for folder, cases in splits:
        for case in cases:
            touch(root / f"images{folder}" / f"{case}.nii.gz")
            touch(root / f"labels{folder}" / f"{case}.nii.gz")
    # amos22's own dataset.json uses the Decathlon {"value": "name"} style.
    (root / "dataset.json").write_text(json.dumps({"labels": {str(i): f"organ{i}" for i in range(n_labels)}}))
    return root


def test_amos_ct_mr_by_case_id(tmp_path):
    root = make_amos(tmp_path / "AMOS22")
    names = register_amos(root)
    assert set(names) == {"amos_ct_train", "amos_ct_val", "amos_mr_train", "amos_mr_val", "amos_train", "amos_val"}
    assert case_ids("amos_ct_train") == ["amos_0001", "amos_0004"]
    assert case_ids("amos_mr_train") == ["amos_0507", "amos_0600"]
    assert case_ids("amos_ct_val") == ["amos_0008"]
    assert case_ids("amos_mr_val") == ["amos_0510"]
    mixed = DatasetCatalog.get("amos_train")
    assert {d["case_id"]: d["modality"] for d in mixed} == {
        "amos_0001": "CT", "amos_0004": "CT", "amos_0507": "MR", "amos_0600": "MR"}
    assert all(d["label_file"] == str(root / "labelsTr" / f"{d['case_id']}.nii.gz") for d in mixed)
    assert MetadataCatalog.get("amos_train").modality == "mixed"
    assert MetadataCatalog.get("amos_mr_val").modality == "MR"
    assert MetadataCatalog.get("amos_ct_val").stuff_classes == list(AMOS_CLASSES)
    assert MetadataCatalog.get("amos_ct_val").num_classes == 16


def test_amos_wrong_dataset_json(tmp_path):
    root = make_amos(tmp_path / "AMOS22", n_labels=14)
    register_amos(root)
    with pytest.raises(InputError, match=str(root / "dataset.json")):
        DatasetCatalog.get("amos_ct_train")


def test_amos_no_mr_cases(tmp_path):
    root = make_amos(tmp_path / "AMOS22")
    (root / "imagesVa" / "amos_0510.nii.gz").unlink()
    register_amos(root)
    with pytest.raises(InputError, match=str(root / "imagesVa")):
        DatasetCatalog.get("amos_mr_val")


# ------------------------------------------------------------------------------------------------
# Laziness, import side effects, config entry point
# ------------------------------------------------------------------------------------------------
def test_builtin_registration_is_lazy(tmp_path):
    root = tmp_path / "no_datasets_here"
    names = register_builtin_datasets(root)
    assert len(names) == 12 and "word_train" in names and "amos_mr_val" in names
    assert MetadataCatalog.get("btcv_val").root == str(root / "BTCV")
    assert MetadataCatalog.get("amos_val").root == str(root / "AMOS22")
    for name, folder in (("word_train", "WORD"), ("btcv_val", "BTCV"), ("amos_ct_val", "AMOS22")):
        with pytest.raises(InputError, match=str(root / folder)):
            DatasetCatalog.get(name)


def test_importing_registers_nothing():
    code = (
        "import json, s2vnet\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "before = (set(DatasetCatalog.list()), set(MetadataCatalog.list()))\n"
        "import s2vnet.data.datasets, s2vnet.data.datasets.nnunet, s2vnet.data.datasets.builtin\n"
        "after = (set(DatasetCatalog.list()), set(MetadataCatalog.list()))\n"
        "print(json.dumps([sorted(after[0] - before[0]), sorted(after[1] - before[1])]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[], []]


def make_cfg(**datasets):
    cfg = get_cfg()
    for key, value in datasets.items():
        setattr(cfg.DATASETS, key, value)
    return cfg


def test_register_from_config(tmp_path):
    make_word(tmp_path / "datasets" / "WORD")
    mine = make_nnunet(tmp_path / "Dataset500_Mine", [f"m_{i}" for i in range(4)])
    cfg = make_cfg(
        ROOT=str(tmp_path / "datasets"),
        NNUNET=[f"mine={mine}"],
        NNUNET_VAL_FRACTION=0.25,
        TRAIN=("word_train", "mine_train"),
        TEST=("mine_val",),
    )
    names = register_datasets_from_config(cfg)
    assert {"word_train", "btcv_val", "amos_ct_train", "mine_train", "mine_val"} <= set(names)
    assert len(case_ids("mine_val")) == 1 and len(case_ids("mine_train")) == 3
    assert case_ids("word_val") == ["word_0001", "word_0004"]
    # Calling it again (e.g. train_net.py and an evaluation hook in one process) is harmless.
    assert register_datasets_from_config(cfg) == names


def test_register_from_config_unknown_name_lists_available(tmp_path):
    mine = make_nnunet(tmp_path / "mine", ["m_1"])
    cfg = make_cfg(NNUNET=[f"mine={mine}"], TRAIN=("mine_train",), TEST=("word_test",))
    with pytest.raises(InputError, match="word_test") as err:
        register_datasets_from_config(cfg)
    assert "mine_train" in str(err.value)
    assert "coco_2017_train" not in str(err.value)  # Detectron2's own datasets are not offered


def test_register_from_config_without_new_keys():
    """Configs without ROOT / NNUNET (older config module) work; unknown names still fail."""
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("coco_2017_train",)  # registered by Detectron2, but not a volume dataset
    with pytest.raises(InputError, match="coco_2017_train"):
        register_datasets_from_config(cfg)


@pytest.mark.parametrize("entry", ["no_equals_sign", "=path", "name="])
def test_register_from_config_bad_entry(entry):
    with pytest.raises(InputError, match="DATASETS.NNUNET"):
        register_datasets_from_config(make_cfg(NNUNET=[entry]))
