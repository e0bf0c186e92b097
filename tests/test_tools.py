"""Command-line tools end to end: folder evaluation, overlays, benchmark, the quick demo."""
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _tool(*args, timeout=900):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_folder_evaluation_on_the_real_ct(real_seg_path, tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    seg = nib.load(real_seg_path)
    labels = np.asanyarray(seg.dataobj).astype(np.uint8)
    labels[labels > 7] = 0  # keep the abdominal organs 1-7 (spleen, kidneys, gallbladder, liver, stomach, pancreas)
    nib.save(nib.Nifti1Image(labels, seg.affine), gt_dir / "case.nii.gz")
    shifted = np.roll(labels, 2, axis=0)  # two voxels (6 mm) to the side
    nib.save(nib.Nifti1Image(shifted, seg.affine), pred_dir / "case.nii.gz")
    result = _tool("tools/eval_volume.py", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--output", tmp_path / "report", "--nsd-tolerance", "3", "--diagnostics")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report/results.json").read_text())
    rows = {row["class_id"]: row for row in report["per_case"]}
    assert set(rows) == set(range(1, 8)) - ({c for c in range(1, 8) if not (labels == c).any()})
    for row in rows.values():
        assert 0.0 < row["dsc"] < 1.0
        assert row["hd95"] == pytest.approx(6.0, abs=0.01)  # a pure 6 mm translation
        # A 2-voxel shift errs in strips 2 voxels wide: the band keeps the half next to the boundary.
        assert row["dsc"] < row["band_dsc"] < 1.0
    summary = (tmp_path / "report/summary.md").read_text()
    assert summary.count("| Automatic |") == 1 and "Boundary band" in summary
    assert "band_dsc" in (tmp_path / "report/results.csv").read_text().splitlines()[0]
    # Without --diagnostics: the same scores, and no band anywhere.
    result = _tool("tools/eval_volume.py", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--output", tmp_path / "standard", "--nsd-tolerance", "3")
    assert result.returncode == 0, result.stderr
    standard = json.loads((tmp_path / "standard/results.json").read_text())
    assert [{k: v for k, v in row.items() if k != "band_dsc"} for row in report["per_case"]] == standard["per_case"]
    assert "band_dsc" not in standard["automatic"]["overall"] and "boundary_band_pixels" not in standard["settings"]
    assert "Boundary band" not in (tmp_path / "standard/summary.md").read_text()
    assert "band_dsc" not in (tmp_path / "standard/results.csv").read_text().splitlines()[0]
    result = _tool("tools/eval_volume.py", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--output", tmp_path / "r", "--band-width", "2")
    assert result.returncode == 2 and "--diagnostics" in result.stderr  # the band width is a diagnostics option
    # A band 2 pixels wide holds both strips: every error is in it, so the band DSC is the DSC.
    result = _tool("tools/eval_volume.py", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "--output", tmp_path / "band2", "--diagnostics", "--band-width", "2")
    assert result.returncode == 0, result.stderr
    band2 = json.loads((tmp_path / "band2/results.json").read_text())
    assert band2["settings"]["boundary_band_pixels"] == 2
    for row in band2["per_case"]:
        assert row["band_dsc"] == pytest.approx(row["dsc"])
    # Identical folders score perfectly.
    result = _tool("tools/eval_volume.py", "--pred-dir", gt_dir, "--gt-dir", gt_dir, "--output", tmp_path / "perfect", "--diagnostics")
    perfect = json.loads((tmp_path / "perfect/results.json").read_text())
    assert perfect["automatic"]["overall"]["dsc"] == pytest.approx(1.0)
    assert perfect["automatic"]["overall"]["hd95"] == pytest.approx(0.0)
    assert perfect["automatic"]["overall"]["band_dsc"] == pytest.approx(1.0)


def test_folder_evaluation_errors_name_the_problem(real_seg_path, tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    seg = nib.load(real_seg_path)
    nib.save(seg, tmp_path / "gt" / "a.nii.gz")
    result = _tool("tools/eval_volume.py", "--pred-dir", tmp_path / "pred", "--gt-dir", tmp_path / "gt", "--output", tmp_path / "r")
    assert result.returncode == 2 and "a.nii.gz" in result.stderr
    nib.save(nib.Nifti1Image(np.asanyarray(seg.dataobj)[:, :, :10], seg.affine), tmp_path / "pred" / "a.nii.gz")
    result = _tool("tools/eval_volume.py", "--pred-dir", tmp_path / "pred", "--gt-dir", tmp_path / "gt", "--output", tmp_path / "r")
    assert result.returncode == 2 and "shape" in result.stderr


def test_overlays_render_three_planes(real_ct_path, real_seg_path, tmp_path):
    output = tmp_path / "overlay.png"
    result = _tool("tools/visualize.py", "--image", real_ct_path, "--labels", f"ground truth={real_seg_path}", f"again={real_seg_path}", "--output", output)
    assert result.returncode == 0, result.stderr
    import matplotlib.image

    picture = matplotlib.image.imread(output)
    assert picture.shape[0] > 500 and picture.shape[1] > 800  # two rows of three planes
    assert picture[..., :3].std() > 0.1  # not blank


def test_benchmark_smoke(tmp_path):
    cfg = tiny_config(num_classes=8)
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())
    output = tmp_path / "bench.json"
    result = _tool(
        "tools/benchmark.py", "--config-file", config, "--slices", 8, "--height", 64, "--width", 64, "--repeats", 1, "--warmup", 0,
        "--threads", 1, "--only", "s2vnet", "baseline", "click_round", "encoder", "data_pipeline",
        "--data-volumes", 2, "--data-workers", 2, "--output", output,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    for name in ("s2vnet", "baseline", "click_round", "encoder_batched", "encoder_single"):
        record = report["results"][name]
        assert record["median_s"] > 0 and record["peak_mb"] > 0
    assert report["results"]["click_round"]["encoder_calls_during_rounds"] == 0
    assert report["results"]["baseline"]["paired_s2vnet_s"] > 0 and report["results"]["baseline"]["paired_baseline_s"] > 0
    assert report["results"]["click_round"]["paired_round_s"] > 0 and report["results"]["click_round"]["paired_automatic_s"] > 0
    assert report["results"]["s2vnet"]["mean_live_tracks"] > 0  # propagation really ran
    assert "propagation_overhead_pct" in report["findings"] and "click_round_pct_of_automatic_pass" in report["findings"]
    # The data pipeline measurement starts prepare workers of its own inside its measurement process.
    assert report["results"]["data_pipeline"]["prepare_volumes"] == 2
    assert report["results"]["data_pipeline"]["clip_load_ms_median"] > 0


def test_the_nnunet_style_reference_runs_at_tiny_sizes(tmp_path, monkeypatch):
    import torch

    from s2vnet.benchmark import measurements

    # nnU-Net's plan with a patch scaled down to twice what its strides divide by (32 x 64 x 64: a
    # 2^3 bottleneck, the least instance norm takes), so that it runs in seconds, in this process.
    assert measurements.NNUNET_PATCH_SIZE == (64, 192, 160)
    monkeypatch.setattr(measurements, "NNUNET_PATCH_SIZE", (32, 64, 64))
    cfg = tiny_config(num_classes=8)
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())
    options = {"config_file": str(config), "opts": [], "device": "cpu", "threads": torch.get_num_threads(), "slice_batch": 4,
               "warmup": 0, "repeats": 1, "slices": 8, "height": 64, "width": 64}
    record = measurements.measure("dynunet", options)
    assert record["median_s"] > 0 and record["peak_mb"] > 0 and record["volumes_per_minute"] > 0
    assert record["patch_size"] == [32, 64, 64] and record["parameters_m"] > 1  # nnU-Net's 32-320 filters


def test_the_benchmark_reports_ratios_to_both_3d_references(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" / "benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    seconds = {"s2vnet": 2.0, "swin_unetr": 16.0, "dynunet": 8.0}
    memory = {"s2vnet": 100.0, "swin_unetr": 400.0, "dynunet": 200.0}
    monkeypatch.setattr(tool, "run_in_subprocess", lambda kind, options: {
        "kind": kind, "slices": 8, "height": 64, "width": 64, "median_s": seconds[kind], "peak_mb": memory[kind],
        "volumes_per_minute": 60.0 / seconds[kind], "seconds_per_slice": seconds[kind] / 8})
    output = tmp_path / "bench.json"
    assert tool.main(["--only", "s2vnet", "swin_unetr", "dynunet", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["findings"]["speedup_vs_dynunet"] == pytest.approx(4.0)
    assert report["findings"]["memory_saving_vs_dynunet_pct"] == pytest.approx(50.0)
    assert report["findings"]["speedup_vs_swin_unetr"] == pytest.approx(8.0)
    assert any(row.startswith("| dynunet |") for row in report["table"])


def test_alternating_runs_flip_the_order_and_keep_each_functions_times(monkeypatch):
    import torch

    from s2vnet.benchmark import timing

    calls = []
    # Each "call" reports a fixed duration, so the medians can be checked without timing anything.
    monkeypatch.setattr(timing, "call_seconds", lambda function, device: function())

    def first():
        calls.append("A")
        return 1.0

    def second():
        calls.append("B")
        return 3.0

    assert timing.alternating_runs(first, second, torch.device("cpu"), repeats=4) == (1.0, 3.0)
    assert "".join(calls) == "AB" + "ABBAABBA"  # a warm-up of each, then ABBA order


def test_a_failed_measurement_is_reported_and_the_others_kept(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" / "benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def fake_measurement(kind, options):
        if kind == "baseline":
            raise RuntimeError("measurement 'baseline' failed: ModuleNotFoundError: No module named 'einops'")
        return {"kind": kind, "slices": 8, "height": 64, "width": 64, "median_s": 2.0, "peak_mb": 100.0,
                "volumes_per_minute": 30.0, "seconds_per_slice": 0.25}

    monkeypatch.setattr(tool, "run_in_subprocess", fake_measurement)
    output = tmp_path / "bench.json"
    assert tool.main(["--only", "s2vnet", "baseline", "--output", str(output)]) == 1
    report = json.loads(output.read_text())
    assert set(report["results"]) == {"s2vnet"} and "einops" in report["failed"]["baseline"]
    assert "propagation_overhead_pct" not in report["findings"]


@pytest.mark.slow
def test_quick_demo_writes_a_report_with_sane_scores(tmp_path):
    result = _tool("tools/demo.py", "--quick", "--output", tmp_path / "demo", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "demo"
    for name in ("summary.md", "dsc_per_round.png", "results.json", "train/model_final.pth", "train/metrics.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("overlay_*.png")) and list((out / "predictions").glob("*_automatic.nii.gz"))
    assert list((out / "train").glob("events.out.tfevents.*"))
    report = json.loads((out / "results.json").read_text())
    for setup in ("automatic", "interactive"):
        dsc = report[setup]["overall"]["dsc"]
        assert dsc is not None and math.isfinite(dsc)
        # Chance level: 7 organs covering a few % of the volume give a DSC near 0.02 by guessing.
        assert dsc > 0.1, f"{setup} mean DSC {dsc}"
    assert "S2VNet demo finished" in result.stdout


def test_ablation_rejects_a_missing_model_or_config_before_it_makes_anything(tmp_path):
    out = tmp_path / "ablation"
    result = _tool("tools/ablation.py", "--full-model", tmp_path / "none.pth", "--output", out)
    assert result.returncode != 0 and "none.pth: no such checkpoint" in result.stderr
    result = _tool("tools/ablation.py", "--config-file", tmp_path / "missing.yaml", "--output", out)
    assert result.returncode == 2 and "missing.yaml does not exist" in result.stderr
    assert not out.exists()  # no phantoms, no partial output
