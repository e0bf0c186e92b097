"""Reliability of evaluation and training (issue 22, docs/reliability.md): finished case files are
reused only for the same weights content, config, settings, version and volume; folder mode names
cases by the whole file name; bad labels files, output folders and weights are clear errors."""
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import phantom_config, tiny_model

REPO = Path(__file__).resolve().parents[1]
NAME = "releval"


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(scope="module")
def eval_phantom(tmp_path_factory):
    """(config, cache folder): one training and one test phantom (8 x 64 x 64), registered and prepared."""
    from s2vnet.data.datasets import register_datasets_from_config
    from s2vnet.data.phantom import write_phantom_dataset
    from s2vnet.data.prepare import jobs_for_dataset, prepare_jobs

    root = tmp_path_factory.mktemp("phantom") / "Dataset901_RelEval"
    write_phantom_dataset(root, num_train=1, num_test=1, seed=5, shape=(8, 64, 64))
    cache = tmp_path_factory.mktemp("cache")
    cfg = phantom_config(root, cache, name=NAME)
    register_datasets_from_config(cfg)
    jobs = [job for name in (cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]) for job in jobs_for_dataset(name, cache)]
    report = prepare_jobs(jobs, progress=False)
    assert report.ok, report.failed
    return cfg, cache


def _save_weights(cfg, path: Path, seed: int) -> None:
    import torch

    torch.save({"model": tiny_model(cfg, seed=seed).state_dict()}, path)


def _with(cfg, **values):
    cfg = cfg.clone()
    cfg.defrost()
    for key, value in values.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    cfg.freeze()
    return cfg


@pytest.fixture
def counted_volumes(monkeypatch):
    """The cases each evaluation really evaluates (not reused), by case id."""
    from s2vnet.evaluation import volume_evaluator

    evaluated = []
    original = volume_evaluator.evaluate_volume

    def counting(predictor, case, *args, **kwargs):
        evaluated.append(case)
        return original(predictor, case, *args, **kwargs)

    monkeypatch.setattr(volume_evaluator, "evaluate_volume", counting)
    return evaluated


def test_model_mode_reuses_case_files_only_for_the_same_weights_config_version_and_volume(
    eval_phantom, tmp_path, counted_volumes, caplog, monkeypatch
):
    from s2vnet.evaluation.settings import EvaluationSettings
    from s2vnet.evaluation.volume_evaluator import evaluate_dataset
    from s2vnet.inference import load_predictor

    base, cache = eval_phantom
    weights = tmp_path / "model.pth"
    _save_weights(base, weights, seed=0)
    base = _with(base, **{"MODEL.WEIGHTS": str(weights)})

    def evaluations(cfg) -> int:
        """How many cases an evaluation of ``cfg`` into the same report folder evaluated."""
        counted_volumes.clear()
        settings = EvaluationSettings.from_config(cfg, cfg.DATASETS.TEST[0], rounds=0)
        evaluate_dataset(cfg, load_predictor(cfg), cfg.DATASETS.TEST[0], tmp_path / "report", settings, progress=False)
        return len(counted_volumes)

    assert evaluations(base) == 1
    assert evaluations(base) == 0  # the same everything: reused
    # The checkpoint at the same path is replaced (training went on): evaluated again.
    _save_weights(base, weights, seed=1)
    assert evaluations(base) == 1
    # The same weights under another path: reused (the content counts, not the path), and the log says so.
    moved = tmp_path / "moved.pth"
    weights.rename(moved)
    base = _with(base, **{"MODEL.WEIGHTS": str(moved)})
    with caplog.at_level(logging.INFO, logger="s2vnet.evaluation.volume_evaluator"):
        assert evaluations(base) == 0
    assert "1 case(s) reused" in caplog.text and "0 evaluated" in caplog.text
    # A config value that changes the predictions, though no evaluation setting names it.
    threshold = base.MODEL.S2VNET.PROPAGATION.SCORE_THRESHOLD
    assert evaluations(_with(base, **{"MODEL.S2VNET.PROPAGATION.SCORE_THRESHOLD": threshold + 0.1})) == 1
    assert evaluations(base) == 1
    # Another S2VNet version wrote the case file.
    import s2vnet

    monkeypatch.setattr(s2vnet, "__version__", s2vnet.__version__ + ".dev1")
    assert evaluations(base) == 1
    assert evaluations(base) == 0
    # The prepared volume changed (prepared again from an edited label file).
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from s2vnet.data.prepare import case_cache_dir

    test_case = DatasetCatalog.get(base.DATASETS.TEST[0])[0]["image_file"]
    label_file = case_cache_dir(cache, MetadataCatalog.get(base.DATASETS.TEST[0]).root, test_case) / "label.npy"
    label = np.load(label_file)
    label[label.shape[0] // 2, :4, :4] = 1
    np.save(label_file, label)
    with caplog.at_level(logging.INFO, logger="s2vnet.evaluation.volume_evaluator"):
        assert evaluations(base) == 1
    assert "volume_sha256" in caplog.text  # the log says why the case file was not reused


def test_evaluations_during_training_do_not_reuse_an_earlier_models_cases(eval_phantom, tmp_path, counted_volumes):
    from s2vnet.evaluation.volume_evaluator import evaluate_datasets

    cfg, _ = eval_phantom
    # The trainer's periodic evaluation: the same config and folder, the model trained further.
    evaluate_datasets(cfg, tiny_model(cfg, seed=0), cfg.DATASETS.TEST, tmp_path)
    evaluate_datasets(cfg, tiny_model(cfg, seed=1), cfg.DATASETS.TEST, tmp_path)
    assert len(counted_volumes) == 2
    evaluate_datasets(cfg, tiny_model(cfg, seed=1), cfg.DATASETS.TEST, tmp_path)
    assert len(counted_volumes) == 2


def _label_file(path: Path, shift: int = 0) -> None:
    labels = np.zeros((8, 8, 4), dtype=np.uint8)
    labels[2 + shift : 6 + shift, 2:6, 1:3] = 1
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)


def _folders(tmp_path: Path, names) -> tuple:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for index, name in enumerate(names):
        _label_file(gt_dir / name)
        _label_file(pred_dir / name, shift=index % 2)
    return gt_dir, pred_dir


def test_folder_mode_names_cases_by_the_file_name_without_the_volume_suffix(tmp_path):
    from s2vnet.evaluation.volume_evaluator import evaluate_folders

    gt_dir, pred_dir = _folders(tmp_path, ["case.a.nii.gz", "case.b.nii.gz"])
    results = evaluate_folders(pred_dir, gt_dir, tmp_path / "report", progress=False)
    assert {row["case"] for row in results["per_case"]} == {"case.a", "case.b"}
    assert results["automatic"]["overall"]["cases"] == 2


def test_folder_mode_refuses_two_label_files_of_one_case(tmp_path):
    from s2vnet.evaluation.volume_evaluator import evaluate_folders
    from s2vnet.utils.errors import InputError

    gt_dir, pred_dir = _folders(tmp_path, ["case.nii", "case.nii.gz"])
    with pytest.raises(InputError, match=r"\['case.nii', 'case.nii.gz'\] are both case 'case'"):
        evaluate_folders(pred_dir, gt_dir, tmp_path / "report", progress=False)
    assert not (tmp_path / "report").exists()


def _eval(caplog, *argv) -> int:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        return _load_tool("eval_volume").main([str(a) for a in argv])


def test_eval_labels_file_errors_name_the_file_and_the_value(tmp_path, caplog):
    gt_dir, pred_dir = _folders(tmp_path, ["c.nii.gz"])
    labels = tmp_path / "dataset.json"
    args = ("--pred-dir", pred_dir, "--gt-dir", gt_dir, "--output", tmp_path / "report", "--labels", labels)
    labels.write_text('{"labels": {"background": 0, "liver": 1,')
    assert _eval(caplog, *args) == 2
    assert f"--labels {labels} is not a readable JSON file" in caplog.text
    labels.write_text(json.dumps({"labels": {"background": 0, "liver": "one"}}))
    assert _eval(caplog, *args) == 2
    assert str(labels) in caplog.text and "'liver' has value 'one'" in caplog.text
    assert not (tmp_path / "report").exists()
    # A good file names the classes, in either dataset.json style.
    for mapping in ({"background": 0, "liver": 1}, {"0": "background", "1": "liver"}):
        labels.write_text(json.dumps({"labels": mapping}))
        assert _eval(caplog, *args) == 0
        assert json.loads((tmp_path / "report/results.json").read_text())["per_case"][0]["class_name"] == "liver"


def test_eval_labels_file_ignore_label_is_not_scored(tmp_path, caplog):
    gt_dir, pred_dir = _folders(tmp_path, ["c.nii.gz"])
    gt = nib.load(gt_dir / "c.nii.gz")
    labels = np.asarray(gt.dataobj).copy()
    labels[0, :, :] = 2  # unannotated voxels, which the prediction calls background
    nib.save(nib.Nifti1Image(labels, gt.affine), gt_dir / "c.nii.gz")
    labels_file = tmp_path / "dataset.json"
    labels_file.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "ignore": 2}}))
    assert _eval(caplog, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--output", tmp_path / "report", "--labels", labels_file) == 0
    results = json.loads((tmp_path / "report/results.json").read_text())
    assert [(row["class_name"], row["dsc"]) for row in results["per_case"]] == [("liver", 1.0)]
    assert results["settings"]["ignore_label"] == 2


def test_eval_refuses_an_output_that_is_a_file_before_any_work(tmp_path, caplog):
    gt_dir, pred_dir = _folders(tmp_path, ["c.nii.gz"])
    output = tmp_path / "report.txt"
    output.write_text("not a folder")
    assert _eval(caplog, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--output", output) == 2
    assert f"output folder {output} is a file" in caplog.text
    assert _eval(caplog, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--output", output / "report") == 2
    assert f"output folder {output / 'report'} cannot be created: {output} is a file" in caplog.text
    assert output.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_eval_refuses_a_read_only_output_folder(tmp_path, caplog):
    gt_dir, pred_dir = _folders(tmp_path, ["c.nii.gz"])
    output = tmp_path / "locked"
    output.mkdir()
    output.chmod(0o555)
    try:
        assert _eval(caplog, "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--output", output / "report") == 2
        assert f"output folder {output / 'report'} is not writable (in {output})" in caplog.text
    finally:
        output.chmod(0o755)


def test_model_mode_checks_the_output_before_loading_the_model(eval_phantom, tmp_path, caplog):
    cfg, _ = eval_phantom
    config = tmp_path / "model.yaml"
    config.write_text(_with(cfg, **{"MODEL.WEIGHTS": str(tmp_path / "absent.pth")}).dump())
    output = tmp_path / "report.txt"
    output.write_text("")
    assert _eval(caplog, "--config-file", config, "--rounds", 0, "--output", output) == 2
    assert f"output folder {output} is a file" in caplog.text  # not the missing weights: nothing was loaded


def test_train_net_with_missing_weights_exits_2_with_one_line(eval_phantom, tmp_path):
    cfg, _ = eval_phantom
    config = tmp_path / "train.yaml"
    config.write_text(_with(cfg, **{"OUTPUT_DIR": str(tmp_path / "out"), "SOLVER.MAX_ITER": 1}).dump())
    missing = tmp_path / "no_such_model.pth"
    result = subprocess.run(
        # PyTorch's own deprecation warnings on import are not the tool's output.
        [sys.executable, "-W", "ignore::FutureWarning", "tools/train_net.py", "--config-file", str(config), "MODEL.WEIGHTS", str(missing)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"MODEL.WEIGHTS {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything started


def test_train_net_resume_needs_no_weights_when_a_checkpoint_exists(eval_phantom, tmp_path):
    from s2vnet.utils.errors import InputError

    check_weights = _load_tool("train_net").check_weights
    cfg, _ = eval_phantom
    cfg = _with(cfg, **{"OUTPUT_DIR": str(tmp_path), "MODEL.WEIGHTS": str(tmp_path / "absent.pth")})
    with pytest.raises(InputError, match="absent.pth does not exist"):
        check_weights(cfg, resume=True)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    check_weights(cfg, resume=True)  # --resume loads the last checkpoint, not MODEL.WEIGHTS
    with pytest.raises(InputError, match="absent.pth does not exist"):
        check_weights(cfg, resume=False)
