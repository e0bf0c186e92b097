"""Prediction from a model that describes itself: the checkpoint's model description, the
clicks.json reader and writer, and tools/predict.py on a model whose nnU-Net training data set is
neither registered nor present any more."""
import json
import os
import re
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


# ------------------------------------------------------------------ reliability (issue 22)
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A config file and random-initialised weights without a model description (8 classes)."""
    from conftest import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("tiny_weights"))


@pytest.fixture(scope="module")
def predict_tool():
    """tools/predict.py as a module, so that its main() runs in this process (no start-up cost)."""
    from conftest import load_tool

    return load_tool("predict", "predict_tool_reliability")


def _ct(path: Path, seed: int = 0, shape=(64, 64, 3)) -> Path:
    """A small CT-like NIfTI (HU from -1000 to 400)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-1000, 400, size=shape).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return path


def _run(predict_tool, weights, *args) -> int:
    config, checkpoint = weights
    return predict_tool.main(["--config-file", str(config), *map(str, args), "MODEL.WEIGHTS", str(checkpoint)])


@pytest.fixture
def no_inference(monkeypatch):
    """Fail the test if the model is loaded: the error under test must come before any work."""
    import s2vnet.inference

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the arguments are wrong")

    monkeypatch.setattr(s2vnet.inference, "load_predictor", refuse)


def test_an_output_never_replaces_an_input(tiny_weights, predict_tool, tmp_path, caplog):
    ct = _ct(tmp_path / "cts" / "ct.nii.gz")
    other = _ct(tmp_path / "cts" / "other.nii.gz", seed=1)
    originals = {path: path.read_bytes() for path in (ct, other)}
    (tmp_path / "link.nii.gz").symlink_to(ct)
    os.link(ct, tmp_path / "hard.nii.gz")
    for args in [
        ("--input", ct, "--output", ct),  # the same path
        ("--input", ct, "--output", tmp_path / "cts" / ".." / "cts" / "ct.nii.gz"),  # another spelling of it
        ("--input", ct, "--output", tmp_path / "cts"),  # a folder: the output would be cts/ct.nii.gz
        ("--input", ct, "--output", tmp_path / "link.nii.gz"),  # a symbolic link to the input
        ("--input", tmp_path / "link.nii.gz", "--output", ct),  # the file an input link points to
        ("--input", ct, "--output", tmp_path / "hard.nii.gz"),  # a hard link to the input
        ("--input", tmp_path / "cts", "--output", tmp_path / "cts"),  # a folder onto itself
        ("--input", tmp_path / "cts", "--output", tmp_path / "cts" / "segs"),  # inside the input folder
    ]:
        caplog.clear()
        assert _run(predict_tool, tiny_weights, *args, "--overwrite") == 2, args
        assert "input" in caplog.text and ("never replaces an input" in caplog.text or "inside it" in caplog.text), caplog.text
        assert all(path.read_bytes() == data for path, data in originals.items()), args
    assert sorted(p.name for p in (tmp_path / "cts").iterdir()) == ["ct.nii.gz", "other.nii.gz"]


def test_a_rerun_with_save_probabilities_writes_the_missing_maps(tiny_weights, predict_tool, tmp_path):
    inputs = tmp_path / "cts"
    for i in range(2):
        _ct(inputs / f"ct_{i}.nii.gz", seed=i)
    outputs = tmp_path / "segs"
    assert _run(predict_tool, tiny_weights, "--input", inputs, "--output", outputs) == 0
    assert sorted(p.name for p in outputs.iterdir()) == ["ct_0.nii.gz", "ct_1.nii.gz"]
    assert _run(predict_tool, tiny_weights, "--input", inputs, "--output", outputs, "--save-probabilities") == 0
    assert sorted(p.name for p in outputs.iterdir()) == [
        "ct_0.nii.gz", "ct_0_probabilities.nii.gz", "ct_1.nii.gz", "ct_1_probabilities.nii.gz"
    ]
    assert nib.load(outputs / "ct_0_probabilities.nii.gz").shape == (64, 64, 3, 8)


def test_weights_that_do_not_fit_the_model_are_an_input_error(tiny_weights, tmp_path):
    from s2vnet.config import load_config
    from s2vnet.inference import load_predictor

    config, weights = tiny_weights
    # Another class count (a checkpoint without a description, so only the parameters tell).
    expected = (r"random.pth does not fit the model .*\(3 parameter\(s\) of another shape: "
                r"decoder.class_embed.weight \(9, 32\) in the file, \(6, 32\) in the model, [^;]*\); was")
    with pytest.raises(InputError, match=expected):
        load_predictor(load_config(str(config), ["MODEL.WEIGHTS", str(weights), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"]))
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    name = sorted(checkpoint["model"])[-1]
    lacking = {**checkpoint, "model": {k: v for k, v in checkpoint["model"].items() if k != name}}
    torch.save(lacking, tmp_path / "lacking.pth")
    with pytest.raises(InputError, match=rf"lacking.pth does not fit .*1 parameter\(s\) missing: {re.escape(name)}"):
        load_predictor(load_config(str(config), ["MODEL.WEIGHTS", str(tmp_path / "lacking.pth")]))
    extra = {**checkpoint, "model": {**checkpoint["model"], "head.extra.weight": torch.zeros(2)}}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(InputError, match=r"extra.pth does not fit .*the model does not have: head.extra.weight"):
        load_predictor(load_config(str(config), ["MODEL.WEIGHTS", str(tmp_path / "extra.pth")]))


def test_a_corrupt_checkpoint_is_an_input_error_naming_it(tiny_weights, tmp_path):
    from s2vnet.config import load_config
    from s2vnet.inference import load_predictor

    config, weights = tiny_weights
    data = weights.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    torch.save({"model": [1, 2]}, tmp_path / "list.pth")
    for name, message in [
        ("truncated.pth", "cannot be read as a PyTorch checkpoint"),
        ("empty.pth", "cannot be read as a PyTorch checkpoint"),
        ("text.pth", "cannot be read as a PyTorch checkpoint"),
        ("tensor.pth", "cannot be read as a PyTorch checkpoint"),
        ("list.pth", "is not a model checkpoint"),
    ]:
        with pytest.raises(InputError, match=rf"MODEL.WEIGHTS {re.escape(str(tmp_path / name))} {message}"):
            load_predictor(load_config(str(config), ["MODEL.WEIGHTS", str(tmp_path / name)]))


def test_inputs_that_share_an_output_are_refused_before_any_work(tiny_weights, predict_tool, tmp_path, caplog, no_inference):
    inputs = tmp_path / "cts"
    _ct(inputs / "case.nii.gz")
    nib.save(nib.load(inputs / "case.nii.gz"), inputs / "case.nii")
    assert _run(predict_tool, tiny_weights, "--input", inputs, "--output", tmp_path / "segs") == 2
    assert f"{inputs / 'case.nii'} and the labels of {inputs / 'case.nii.gz'} would both be written to {tmp_path / 'segs' / 'case.nii.gz'}" in caplog.text
    assert not (tmp_path / "segs").exists()
    # A case's probabilities and another's labels collide just the same.
    shutil.move(inputs / "case.nii", inputs / "case_probabilities.nii.gz")
    assert _run(predict_tool, tiny_weights, "--input", inputs, "--output", tmp_path / "segs", "--save-probabilities") == 2
    assert "the probabilities of" in caplog.text


def test_an_existing_folder_as_the_output_of_one_input_gets_it_inside(tiny_weights, predict_tool, tmp_path, caplog):
    ct = _ct(tmp_path / "ct_0000.nii.gz")
    (tmp_path / "segs").mkdir()
    assert _run(predict_tool, tiny_weights, "--input", ct, "--output", tmp_path / "segs") == 0
    assert [p.name for p in (tmp_path / "segs").iterdir()] == ["ct.nii.gz"]
    assert "Wrote 1 case(s)" in caplog.text


def test_outputs_of_nnunet_inputs_drop_the_channel_suffix(tiny_weights, predict_tool, tmp_path):
    images = tmp_path / "imagesTs"
    for i in range(2):
        _ct(images / f"case_{i:03d}_0000.nii.gz", seed=i)
    assert _run(predict_tool, tiny_weights, "--input", images, "--output", tmp_path / "preds") == 0
    # The names of nnU-Net's labels (labelsTs/case_000.nii.gz), which eval_volume.py --gt-dir matches by name.
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == ["case_000.nii.gz", "case_001.nii.gz"]

    from s2vnet.inference.case_prediction import case_name

    assert [case_name(Path(n)) for n in ("case_0000.nii.gz", "ct.nii", "ct_0001.mha", "_0000.nii.gz", "series_0000")] == [
        "case", "ct", "ct_0001", "_0000", "series"
    ]


def test_a_click_set_with_both_rounds_and_clicks_is_refused(tmp_path):
    path = tmp_path / "clicks.json"
    click = {"ijk": [1, 2, 3], "label": 1}
    path.write_text(json.dumps({"rounds": [[click]], "clicks": [click]}))
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}: a click set has both 'rounds' and 'clicks'"):
        read_click_file(path, ["background", "liver"])
    path.write_text(json.dumps({"cases": {"ct.nii.gz": {"rounds": [[click]], "clicks": [click]}}}))
    with pytest.raises(InputError, match="case ct.nii.gz: a click set has both"):
        read_folder_click_file(path, ["background", "liver"], ["ct.nii.gz"])


def test_unwritable_outputs_are_refused_before_any_work(tiny_weights, predict_tool, tmp_path, caplog, monkeypatch, no_inference):
    ct = _ct(tmp_path / "ct.nii.gz")
    (tmp_path / "a_file").write_text("")
    assert _run(predict_tool, tiny_weights, "--input", ct, "--output", tmp_path / "a_file" / "seg.nii.gz") == 2
    assert f"cannot write to {tmp_path / 'a_file'}: {tmp_path / 'a_file'} is a file" in caplog.text
    assert _run(predict_tool, tiny_weights, "--input", tmp_path, "--output", tmp_path / "a_file") == 2
    assert f"--output {tmp_path / 'a_file'} is a file" in caplog.text

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: answer as the file system would for a user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and Path(path) != read_only)
    try:
        assert _run(predict_tool, tiny_weights, "--input", ct, "--output", read_only / "sub" / "seg.nii.gz") == 2
    finally:
        read_only.chmod(0o755)
    assert f"cannot write to {read_only / 'sub'}: {read_only} is not writable" in caplog.text
    assert not list(read_only.iterdir())


def test_a_device_this_machine_lacks_is_refused(tiny_weights, predict_tool, tmp_path, caplog, monkeypatch, no_inference):
    ct = _ct(tmp_path / "ct.nii.gz")
    assert _run(predict_tool, tiny_weights, "--input", ct, "--output", tmp_path / "seg.nii.gz", "--device", "gpu0") == 2
    assert "--device 'gpu0' is not a device: use cpu, cuda or cuda:N" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _run(predict_tool, tiny_weights, "--input", ct, "--output", tmp_path / "seg.nii.gz", "--device", "cuda") == 2
    assert "--device cuda: no CUDA GPU is usable on this machine; use cpu" in caplog.text
    assert not (tmp_path / "seg.nii.gz").exists()


def test_a_failing_case_does_not_stop_a_folder_run(tiny_weights, predict_tool, tmp_path, caplog):
    inputs = tmp_path / "cts"
    for i in range(3):
        _ct(inputs / f"ct_{i}.nii.gz", seed=i)
    (inputs / "ct_3.nii.gz").write_bytes((inputs / "ct_0.nii.gz").read_bytes()[:100])  # truncated
    outputs = tmp_path / "segs"
    (outputs / "ct_1.nii.gz").mkdir(parents=True)  # the output's name is taken by a folder
    assert _run(predict_tool, tiny_weights, "--input", inputs, "--output", outputs) == 1
    assert (outputs / "ct_0.nii.gz").is_file() and (outputs / "ct_2.nii.gz").is_file()
    assert "Wrote 2 case(s)" in caplog.text and "0 skipped (done already), 2 failed" in caplog.text
    summary = caplog.text[caplog.text.index("2 of 4 case(s) failed"):]
    assert f"\n  {inputs / 'ct_1.nii.gz'}: writing {outputs / 'ct_1.nii.gz'} failed: [Errno 21] Is a directory" in summary
    assert f"\n  {inputs / 'ct_3.nii.gz'}: cannot read as NIfTI" in summary


def test_bad_arguments_are_found_before_the_inference(tiny_weights, predict_tool, tmp_path, caplog, capsys, no_inference):
    ct = _ct(tmp_path / "ct.nii.gz")
    assert _run(predict_tool, tiny_weights, "--input", ct, "--output", tmp_path / "seg.png") == 2
    assert "--output " + str(tmp_path / "seg.png") + ": unsupported output format; use one of .nii.gz, .nii, .mha, .nrrd" in caplog.text
    with pytest.raises(SystemExit) as exit_:
        _run(predict_tool, tiny_weights, "--input", ct, "--output", tmp_path / "seg.nii.gz", "--modality", "XR")
    assert exit_.value.code == 2 and "'XR' is not a modality: use CT or MR" in capsys.readouterr().err
    assert predict_tool.modality_argument("mri") == "MR" and predict_tool.modality_argument(" ct") == "CT"


def test_clicks_outside_the_volume_are_refused_before_encoding(tiny_weights, predict_tool, tmp_path, caplog, monkeypatch):
    from s2vnet.inference import case_prediction

    def encode(*args, **kwargs):
        raise AssertionError("the volume was encoded although a click lies outside it")

    monkeypatch.setattr(case_prediction, "InteractiveSession", encode)
    inputs = tmp_path / "cts"
    ct = _ct(inputs / "ct.nii.gz")
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"rounds": [[{"ijk": [3, 4, 1], "label": 1}], [{"ijk": [10, 64, 1], "label": 2}]]}))
    assert _run(predict_tool, tiny_weights, "--input", ct, "--output", tmp_path / "seg.nii.gz", "--clicks", clicks) == 1
    assert f"{clicks} round 1 click 0: voxel [10, 64, 1] is outside {ct}, whose shape is (64, 64, 3) (axis 1 goes from 0 to 63)" in caplog.text
    clicks.write_text(json.dumps({"cases": {"ct.nii.gz": {"clicks": [{"ijk": [0, 0, 3], "label": 1}]}}}))
    assert _run(predict_tool, tiny_weights, "--input", inputs, "--output", tmp_path / "segs", "--clicks", clicks) == 1
    assert f"{clicks} case ct.nii.gz round 0 click 0: voxel [0, 0, 3] is outside {ct}" in caplog.text
