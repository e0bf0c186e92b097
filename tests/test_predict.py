"""Prediction from a model that describes itself: the checkpoint's model description, the
clicks.json reader and writer, and tools/predict.py on a model whose nnU-Net training data set is
neither registered nor present any more."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import phantom_config
from s2vnet.checkpoint import (
    DESCRIPTION_KEY,
    IntensityNormalization,
    ModelDescription,
    check_description_matches_config,
    describe_model,
)
from s2vnet.data.phantom import CLASS_NAMES, write_phantom_dataset
from s2vnet.inference.click_file import CaseClicks, VoxelClick, read_click_file, read_folder_click_file, write_click_file
from s2vnet.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _predict(config, weights, *args):
    return subprocess.run(
        [sys.executable, str(REPO / "tools/predict.py"), "--config-file", str(config), *map(str, args), "MODEL.WEIGHTS", str(weights)],
        capture_output=True, text=True, timeout=600,
    )


# ------------------------------------------------------------------ clicks.json
def test_click_file_round_trip(tmp_path):
    names = ["background", "liver", "spleen"]
    clicks = CaseClicks(((VoxelClick((12, 8, 4), 1), VoxelClick((6, 7, 4), 0)), (VoxelClick((11, 9, 5), 2),)))
    for labels in (names, None):  # labels written as names, or as ids
        write_click_file(tmp_path / "one.json", clicks, labels)
        assert read_click_file(tmp_path / "one.json", names) == clicks
    spec = json.loads((tmp_path / "one.json").read_text())
    assert spec == {"rounds": [[{"ijk": [12, 8, 4], "label": 1}, {"ijk": [6, 7, 4], "label": 0}], [{"ijk": [11, 9, 5], "label": 2}]]}
    write_click_file(tmp_path / "one.json", clicks, names)
    assert json.loads((tmp_path / "one.json").read_text())["rounds"][0][0] == {"ijk": [12, 8, 4], "label": "liver"}

    cases = {"ct_0.nii.gz": clicks, "ct_1.nii.gz": CaseClicks(((VoxelClick((1, 2, 3), 2),),))}
    write_click_file(tmp_path / "folder.json", cases, names)
    assert read_folder_click_file(tmp_path / "folder.json", names, ["ct_0.nii.gz", "ct_1.nii.gz", "ct_2.nii.gz"]) == cases
    with pytest.raises(InputError, match=r"--clicks x: no input named \['ct_1.nii.gz'\]"):
        read_folder_click_file(tmp_path / "folder.json", names, ["ct_0.nii.gz"], name="--clicks x")

    (tmp_path / "flat.json").write_text(json.dumps({"clicks": [{"ijk": [1, 2, 3], "label": "spleen"}]}))
    assert read_click_file(tmp_path / "flat.json", names) == CaseClicks(((VoxelClick((1, 2, 3), 2),),))


def test_click_file_errors_name_the_click(tmp_path):
    names = ["background", "liver"]
    path = tmp_path / "clicks.json"
    for spec, message in [
        ({"rounds": [[{"ijk": [1, 2], "label": 1}]]}, "round 0 click 0: 'ijk' must be three integer voxel indices"),
        ({"rounds": [[], [{"ijk": [1, 2, 3], "label": "kidney"}]]}, "round 1 click 0: label 'kidney' is not a class name"),
        ({"clicks": [{"ijk": [1, 2, 3], "label": 2}]}, r"label id 2 is not a class \(valid: 0..1\)"),
        ({"clicks": [{"ijk": [1, 2, 3], "label": True}]}, "must be a class name or id"),
        ({"points": []}, "needs 'rounds'"),
    ]:
        path.write_text(json.dumps(spec))
        with pytest.raises(InputError, match=message):
            read_click_file(path, names)
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="the top level must be an object"):
        read_click_file(path, names)
    with pytest.raises(InputError, match="--clicks missing.json does not exist"):
        read_click_file(tmp_path / "missing.json", names, name="--clicks missing.json")


# ------------------------------------------------------------------ the model description
def test_description_from_the_registered_training_data_set(tmp_path):
    from s2vnet.data.datasets import register_datasets_from_config, unregister_datasets

    # Registration reads only dataset.json (the image folders are listed when the data set is loaded).
    root = tmp_path / "Dataset901_Described"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "liver": 1, "spleen": 2}}))
    cfg = phantom_config(root, tmp_path / "cache", name="described")
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.DATASETS.TEST = ()  # no imagesTs
    register_datasets_from_config(cfg)
    try:
        description = describe_model(cfg)
        assert description.class_names == ("background", "liver", "spleen") and description.num_classes == 3
        assert description.modality == "MR" and description.training_datasets == ("described_train",)
        assert description.intensity == IntensityNormalization((-175.0, 250.0), (0.5, 99.5))
        assert ModelDescription.from_dict(description.to_dict(), "x") == description
        json.dumps(description.to_dict())  # plain data: loadable with torch.load(weights_only=True)
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4
        with pytest.raises(InputError, match=r"described_train has 3 classes .*NUM_CLASSES is 4"):
            describe_model(cfg)
    finally:
        unregister_datasets(["described_train"])


def test_a_description_that_contradicts_the_config_is_refused():
    from s2vnet.config import get_s2vnet_cfg

    cfg = get_s2vnet_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    description = ModelDescription(("background", "liver", "spleen"), 3, "CT")
    check_description_matches_config(description, cfg, "model.pth")  # agrees: nothing happens
    other_window = ModelDescription(("background", "liver", "spleen"), 3, "CT", IntensityNormalization(ct_window=(-100.0, 200.0)))
    expected = r"model.pth was trained on .*CT window \[-100.0, 200.0\].* this S2VNet normalises with CT window \[-175.0, 250.0\]"
    with pytest.raises(InputError, match=expected):
        check_description_matches_config(other_window, cfg, "model.pth")
    with pytest.raises(InputError, match="2 class names"):
        ModelDescription(("background", "liver"), 3, "CT")
    with pytest.raises(InputError, match="lacks \\['intensity'\\]"):
        ModelDescription.from_dict({"class_names": ["background"], "num_classes": 1, "modality": "CT"}, "old.pth")


# ------------------------------------------------------------------ a model trained on an nnU-Net data set
@pytest.fixture(scope="module")
def described_model(tmp_path_factory):
    """A tiny model trained for two iterations on an nnU-Net-layout phantom data set, after which
    the data set and its cache are deleted and unregistered. Returns (config file, folder of the
    checkpoints, a test image, its labels)."""
    from detectron2.utils.env import seed_all_rng

    from s2vnet.data.datasets import register_datasets_from_config, unregister_datasets
    from s2vnet.data.prepare import jobs_for_dataset, prepare_jobs
    from s2vnet.engine.trainer import S2VNetTrainer

    work = tmp_path_factory.mktemp("described")
    root = write_phantom_dataset(work / "Dataset902_Gone", num_train=2, num_test=1, seed=5, shape=(12, 64, 64))
    kept = work / "kept"
    kept.mkdir()
    image, labels = kept / "case_0000.nii.gz", kept / "case.nii.gz"
    test_image = sorted((root / "imagesTs").glob("*_0000.nii.gz"))[0]
    shutil.copy(test_image, image)
    shutil.copy(root / "labelsTs" / test_image.name.replace("_0000.nii.gz", ".nii.gz"), labels)

    cfg = phantom_config(root, work / "cache", name="gonephantom")
    cfg.OUTPUT_DIR = str(work / "train")
    cfg.DATASETS.TEST = ()
    cfg.TEST.EVAL_PERIOD = 0
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.STEPS = (1,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.freeze()
    names = register_datasets_from_config(cfg)
    try:
        report = prepare_jobs(jobs_for_dataset(cfg.DATASETS.TRAIN[0], work / "cache"), progress=False)
        assert report.ok, report.failed
        seed_all_rng(cfg.SEED)
        trainer = S2VNetTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        unregister_datasets(names)
    shutil.rmtree(root)
    shutil.rmtree(work / "cache")
    config = work / "config.yaml"
    config.write_text(cfg.dump())  # still names the deleted data set: predict.py must not look for it
    return config, Path(cfg.OUTPUT_DIR), image, labels


def test_every_checkpoint_the_trainer_writes_describes_the_model(described_model):
    _, train_dir, _, _ = described_model
    # The periodic checkpoints and the final one (all written by the PeriodicCheckpointer hook).
    for name in ("model_0000000.pth", "model_0000001.pth", "model_final.pth"):
        checkpoint = torch.load(train_dir / name, map_location="cpu", weights_only=True)
        description = ModelDescription.from_dict(checkpoint[DESCRIPTION_KEY], name)
        assert description.class_names == CLASS_NAMES and description.num_classes == 8
        assert description.modality == "CT" and description.training_datasets == ("gonephantom_train",)
        assert "model" in checkpoint and checkpoint["iteration"] in (0, 1)


def test_predict_uses_class_names_without_the_training_data_set(described_model, tmp_path):
    from detectron2.data import DatasetCatalog

    config, train_dir, image, labels = described_model
    assert not any(name.startswith("gonephantom") for name in DatasetCatalog.list())
    ground_truth = np.asanyarray(nib.load(labels).dataobj)
    liver = [int(v) for v in np.argwhere(ground_truth == CLASS_NAMES.index("liver"))[0]]
    outside = [int(v) for v in np.argwhere(ground_truth == 0)[0]]
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"rounds": [[{"ijk": liver, "label": "liver"}, {"ijk": outside, "label": "background"}]]}))
    output = tmp_path / "seg.nii.gz"
    result = _predict(config, train_dir / "model_final.pth", "--input", image, "--output", output, "--clicks", clicks)
    assert result.returncode == 0, result.stderr
    written = nib.load(output)
    assert written.shape == ground_truth.shape and np.allclose(written.affine, nib.load(image).affine)
    assert "no model description" not in result.stderr


def test_an_older_checkpoint_loads_with_one_warning(described_model, tmp_path):
    config, train_dir, image, _ = described_model
    checkpoint = torch.load(train_dir / "model_final.pth", map_location="cpu", weights_only=True)
    del checkpoint[DESCRIPTION_KEY]
    old = tmp_path / "old.pth"
    torch.save(checkpoint, old)
    result = _predict(config, old, "--input", image, "--output", tmp_path / "seg.nii.gz")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "seg.nii.gz").is_file()
    assert result.stderr.count("has no model description") == 1
    assert "clicks must give class ids (0..7)" in result.stderr and "normalised as CT" in result.stderr
    # Without the description there are no names: a name in the clicks is an error, an id is not.
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"clicks": [{"ijk": [5, 5, 5], "label": "liver"}]}))
    result = _predict(config, old, "--input", image, "--output", tmp_path / "named.nii.gz", "--clicks", clicks, "--modality", "CT")
    assert result.returncode == 2 and "'liver' is not a class name" in result.stderr
    assert "normalised as CT (--modality)" in result.stderr


def test_a_checkpoint_that_contradicts_the_config_is_an_input_error(described_model):
    from s2vnet.config import load_config
    from s2vnet.inference import load_predictor

    config, train_dir, _, _ = described_model
    weights = train_dir / "model_final.pth"
    predictor = load_predictor(load_config(str(config), ["MODEL.WEIGHTS", str(weights)]))
    assert predictor.description.class_names == CLASS_NAMES
    cfg = load_config(str(config), ["MODEL.WEIGHTS", str(weights), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"])
    with pytest.raises(InputError, match=r"model_final.pth holds a model of 8 classes .* MODEL.SEM_SEG_HEAD.NUM_CLASSES is 5"):
        load_predictor(cfg)
