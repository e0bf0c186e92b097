"""The evaluation's diagnostics (s2vnet.evaluation.diagnostics, ``--diagnostics``): click records,
error regions and round changes against hand-made labels and scores, the boundary-band DSC, and
the standard report with and without them."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from s2vnet.data.clicks import Click
from s2vnet.evaluation.diagnostics.boundary_band import band_dsc
from s2vnet.evaluation.diagnostics.clicks import click_records, clicks_markdown, error_region, fused_scores_at, round_change, summarize_clicks
from s2vnet.evaluation.metrics import dice_score
from s2vnet.evaluation.settings import EvaluationSettings
from s2vnet.utils.errors import InputError

NAMES = ["background", "liver", "spleen"]


class FakeSession:
    """native_fused_scores(z) -> (K, Y, X): class k scores k / 10 + z / 100 everywhere, except
    class 2 at (y=1, x=1), which scores 0.9; counts its calls."""

    def __init__(self):
        self.calls = []

    def native_fused_scores(self, z):
        self.calls.append(z)
        scores = torch.arange(3, dtype=torch.float32)[:, None, None] / 10 + z / 100 + torch.zeros(3, 2, 2)
        scores[2, 1, 1] = 0.9
        return scores


def test_fused_scores_at_reads_each_clicked_slice_once():
    session = FakeSession()
    clicks = [Click(z=3, y=1, x=1, label=2), Click(z=3, y=0, x=0, label=1), Click(z=5, y=0, x=1, label=0)]
    scores = fused_scores_at(session, clicks)
    assert sorted(session.calls) == [3, 5]
    assert scores[0] == pytest.approx([0.03, 0.13, 0.9])
    assert scores[2] == pytest.approx([0.05, 0.15, 0.25])


def test_click_records_say_what_each_click_did():
    before = np.zeros((2, 2, 2), np.uint8)
    before[0, 1, 1] = 2  # spleen predicted where the ground truth says liver
    after = before.copy()
    after[1, 0, 0] = 1  # the click on predicted background became liver
    clicks = [Click(z=1, y=0, x=0, label=1), Click(z=0, y=1, x=1, label=1), Click(z=0, y=1, x=1, label=0)]
    scores_before = [np.array([0.9, 0.3, 0.1]), np.array([0.1, 0.3, 0.8]), np.array([0.4, 0.2, 0.8])]
    scores_after = [np.array([0.7, 0.95, 0.1]), np.array([0.1, 0.5, 0.8]), np.array([0.6, 0.2, 0.8])]
    first = click_records("c", 1, clicks[:1], before, after, scores_before[:1], scores_after[:1], NAMES)
    assert first[0]["kind"] == "first"
    missed, wrong_organ, negative = click_records("c", 2, clicks, before, after, scores_before, scores_after, NAMES)
    assert missed == {
        "case": "c", "round": 2, "z": 1, "y": 0, "x": 0, "label": 1, "class_name": "liver", "kind": "missed",
        "label_before": 0, "label_after": 1, "score_before": 0.3, "score_after": 0.95, "best_other_after": 0.7,
        "error_voxels": None, "error_voxels_fixed": None, "error_depth_px": None,  # no ground truth given
    }
    assert wrong_organ["kind"] == "wrong_organ" and wrong_organ["label_before"] == 2 and wrong_organ["best_other_after"] == 0.8
    assert negative["kind"] == "negative" and negative["best_other_after"] == 0.8 and negative["label_after"] == 2
    with pytest.raises(ValueError):  # scores that do not follow the clicks
        click_records("c", 2, clicks, before, after, scores_before[:2], scores_after, NAMES)


def test_error_region_is_the_connected_error_of_the_clicked_kind():
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 1:7, 1:7] = 1
    pred = gt.copy()
    pred[0:2, 1:7, 1:3] = 0  # liver missed: a 2-pixel-wide strip on slices 0-1 ...
    pred[2, 1, 1] = 2  # ... and, on slice 2, one voxel called spleen: another kind of error, not in the region
    pred[2, 5:7, 5:7] = 0  # a separate miss, not connected to the strip
    region = error_region(Click(0, 3, 1, 1), gt, pred)
    assert region.sum() == 24 and region[0:2, 1:7, 1:3].all()
    assert error_region(Click(1, 3, 4, 1), gt, pred) is None  # a voxel already right
    assert error_region(Click(2, 1, 1, 1), gt, pred).sum() == 1


def test_click_records_measure_the_error_region_and_what_the_round_fixed():
    gt = np.zeros((2, 12, 12), np.uint8)
    gt[:, 1:11, 1:11] = 1
    before = gt.copy()
    before[:, 1:11, 1:3] = 0  # a 2-pixel-wide strip of liver missed (depth 1 at its middle)
    before[:, 4:10, 4:10] = 2  # a 6 x 6 block of liver called spleen (depth 3 at its middle)
    after = before.copy()
    after[:, 4:10, 4:7] = 1  # the round fixes half the block and none of the strip
    clicks = [Click(0, 5, 1, 1), Click(0, 6, 6, 1)]
    scores = [np.array([0.1, 0.5, 0.2])] * 2
    strip, block = click_records("c", 2, clicks, before, after, scores, scores, NAMES, gt)
    assert (strip["error_voxels"], strip["error_voxels_fixed"], strip["error_depth_px"]) == (40, 0, 1.0)
    assert (block["error_voxels"], block["error_voxels_fixed"], block["error_depth_px"]) == (72, 36, 3.0)
    first = click_records("c", 1, [Click(0, 2, 5, 1)], before, after, scores[:1], scores[:1], NAMES, gt)[0]
    assert first["error_voxels"] is None  # the first click sits on a voxel already right
    summary = summarize_clicks([strip, block, first], [])
    assert summary["later_clicks_by_depth"] == {
        "<=1": {"clicks": 1, "error_voxels": 40, "error_voxels_fixed": 0},
        "<=2": {"clicks": 0, "error_voxels": 0, "error_voxels_fixed": 0},
        "<=4": {"clicks": 1, "error_voxels": 72, "error_voxels_fixed": 36},
        ">4": {"clicks": 0, "error_voxels": 0, "error_voxels_fixed": 0},
    }
    assert "<=1 px: 1 clicks, 0 of 40 (0%), <=4 px: 1 clicks, 36 of 72 (50%)" in clicks_markdown(summary)


def test_a_voxel_clicked_twice_in_a_round_is_one_record():
    """One organ's false positive can be another's false negative: the protocol clicks its deepest
    voxel once per class, with the same (true) label; that is one click of the user's."""
    from s2vnet.data.clicks import corrective_clicks

    gt = np.ones((1, 5, 5), np.uint8)
    pred = np.full((1, 5, 5), 2, np.uint8)
    clicks = corrective_clicks(gt, pred, [1, 2])
    assert clicks == [clicks[0], clicks[0]]  # liver missed, spleen invented: the same voxel, labelled liver
    scores = [np.array([0.0, 0.2, 0.9])] * 2
    records = click_records("c", 2, clicks, pred, pred, scores, scores, NAMES)
    assert len(records) == 1 and records[0]["kind"] == "wrong_organ"


def test_round_change_counts_voxels_made_right_and_made_wrong():
    gt = np.array([[[1, 1, 0, 0]]])
    before = np.array([[[1, 0, 0, 2]]])  # right, wrong, right, wrong
    after = np.array([[[0, 1, 0, 2]]])  # wrong, right, right, wrong
    change = round_change("c", 3, before, after, gt)
    assert (change["case"], change["round"], change["fixed"], change["broken"]) == ("c", 3, 1, 1)


def test_round_change_bins_changed_voxels_by_slices_from_the_click_of_the_class_they_took():
    from s2vnet.data.clicks import Click

    gt = np.zeros((8, 1, 2), np.uint8)
    gt[:, 0, 0] = 1
    before = np.zeros_like(gt)  # class 1 missed everywhere, column 1 right (background)
    after = before.copy()
    after[[0, 3, 7], 0, 0] = 1  # fixed 0, 3 and 7 slices from the click on slice 0 (two clicks of class 1: slices 0 and 0)
    after[[1, 6], 0, 1] = 1  # broken 1 and 6 slices from it
    after[2, 0, 1] = 2  # broken by class 2, which nobody clicked (eq. 9 cannot do this; the bin shows it)
    clicks = [Click(0, 0, 0, 1), Click(0, 0, 0, 1)]
    change = round_change("c", 2, before, after, gt, clicks)
    assert (change["fixed"], change["broken"]) == (3, 3)
    assert change["by_distance"] == {
        "0-1": {"fixed": 1, "broken": 1}, "2-4": {"fixed": 1, "broken": 0},
        "5+": {"fixed": 1, "broken": 1}, "unclicked": {"fixed": 0, "broken": 1},
    }
    # The nearest click counts: a second click of class 1 on slice 6 brings slices 6 and 7 near.
    near = round_change("c", 2, before, after, gt, clicks + [Click(6, 0, 1, 1)])["by_distance"]
    assert near["0-1"] == {"fixed": 2, "broken": 2} and near["5+"] == {"fixed": 0, "broken": 0}


def test_summary_counts_clicks_on_wrong_voxels_and_their_medians():
    def record(kind, label, before, after, s_before, s_after, other, round_index=2):
        return {"kind": kind, "label": label, "label_before": before, "label_after": after, "round": round_index,
                "score_before": s_before, "score_after": s_after, "best_other_after": other}

    records = [
        record("first", 1, 1, 1, 0.9, 0.95, 0.1, round_index=1),
        record("missed", 1, 0, 1, 0.2, 0.9, 0.6),  # on a wrong voxel, fixed
        record("missed", 1, 0, 0, 0.4, 0.7, 0.95),  # on a wrong voxel, still wrong
        record("wrong_organ", 2, 1, 1, 0.1, 0.2, 0.9),  # its voxel was wrong (1, not 2) and still is
        record("negative", 0, 2, 0, 0.3, 0.9, 0.5),
    ]
    def change(round_index, fixed, broken, near):
        bins = {name: {"fixed": 0, "broken": 0} for name in ("0-1", "2-4", "5+", "unclicked")}
        bins["0-1" if near else "5+"] = {"fixed": fixed, "broken": broken}
        return {"round": round_index, "fixed": fixed, "broken": broken, "by_distance": bins}

    changes = [change(1, 5, 2, True), change(2, 7, 1, False), change(2, 1, 0, True)]
    summary = summarize_clicks(records, changes)
    assert summary["by_kind"]["first"] == {
        "clicks": 1, "on_wrong_voxel": 0, "own_voxel_fixed": 0,
        "median_score_before": None, "median_score_after": None, "median_best_other_after": None,
    }
    missed = summary["by_kind"]["missed"]
    assert (missed["clicks"], missed["on_wrong_voxel"], missed["own_voxel_fixed"]) == (2, 2, 1)
    assert missed["median_score_before"] == pytest.approx(0.3) and missed["median_best_other_after"] == pytest.approx(0.775)
    assert summary["by_kind"]["wrong_organ"]["own_voxel_fixed"] == 0
    assert summary["voxels_per_round"] == {"1": {"fixed": 5, "broken": 2}, "2": {"fixed": 8, "broken": 1}}
    assert summary["voxels_by_click_distance"]["0-1"] == {"fixed": 6, "broken": 2}
    assert summary["voxels_by_click_distance"]["5+"] == {"fixed": 7, "broken": 1}
    text = clicks_markdown(summary)
    assert "first clicks (round 1): 1, none on a wrong voxel" in text
    assert "later clicks of an organ on predicted background: 1 of 2 made their own (wrong) voxel right;" in text
    assert "later clicks of the background: 1 of 1" in text and "1: +5 / -2, 2: +8 / -1" in text
    assert "of the class they took: 0-1: +6 / -2, 5+: +7 / -1" in text
    assert clicks_markdown(summarize_clicks([], [])) == ""


class RowPaintingSession:
    """An interactive session on a 1 x 4 x 4 volume with explicit fused scores: the automatic
    prediction is all background (0.6); round r's click of class c gives c the score 0.6 + 0.1 r
    on the click's whole row (so later rounds win, and there are no ties)."""

    def __init__(self, predictor, image):
        self.scores = torch.zeros(3, 1, 4, 4)
        self.scores[0] = 0.6
        self.pending, self.rounds = [], 0

    def click(self, z, y, x, label):
        self.pending.append((z, y, label))

    def run(self):
        self.rounds += 1
        for z, y, label in self.pending:
            self.scores[label, z, y] = 0.6 + 0.1 * self.rounds
        self.pending = []
        return self.result()

    def result(self):
        return SimpleNamespace(labels=self.scores.max(0).indices.numpy().astype(np.uint8))

    def native_fused_scores(self, z):
        return self.scores[:, z].clone()


def _row_painting_settings(rounds, ignore_label=None, diagnostics=True):
    return EvaluationSettings(class_names=tuple(NAMES), class_ids=(1, 2), rounds=rounds, ignore_label=ignore_label, diagnostics=diagnostics)


def _evaluate_with_row_painting(monkeypatch, gt, rounds, ignore_label=None, diagnostics=True):
    import s2vnet.inference.session as session_module
    from s2vnet.evaluation.volume_evaluator import evaluate_volume

    monkeypatch.setattr(session_module, "InteractiveSession", RowPaintingSession)
    return evaluate_volume(None, "c", gt, gt, (1.0, 1.0, 1.0), _row_painting_settings(rounds, ignore_label, diagnostics))


def test_evaluate_volume_records_what_each_round_and_click_did(monkeypatch):
    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, 1, :] = 1  # liver: all of row 1, which its first click paints exactly
    gt[0, 2:, 1:3] = 2  # spleen: a 2 x 2 block; a click paints the whole of one of its rows
    result = _evaluate_with_row_painting(monkeypatch, gt, rounds=4)
    records, changes = result.clicks, result.round_changes
    for r in records:  # the labels before and after are the argmax of the fused scores recorded
        assert (r["label_after"] == r["label"]) == (r["score_after"] > r["best_other_after"])
        assert r["score_before"] < r["score_after"]
    # Round 1: liver's row (+4) and half of a spleen row (+2, -2 beside it). Round 2: spleen's other
    # row is missed (the largest error): the same again. Round 3: the background takes back the
    # false positives of one row with the spleen there (+2, -2), and round 4 the spleen again.
    assert [r["kind"] for r in records] == ["first", "first", "missed", "negative", "missed"]
    assert [(c["round"], c["fixed"], c["broken"]) for c in changes] == [(1, 6, 2), (2, 2, 2), (3, 2, 2), (4, 2, 2)]


def test_rounds_without_clicks_repeat_the_scores_and_record_nothing(monkeypatch):
    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, 1, :] = 1
    gt[0, 2, :] = 2  # both organs are whole rows: the first clicks segment them exactly
    result = _evaluate_with_row_painting(monkeypatch, gt, rounds=3)
    assert [c["round"] for c in result.round_changes] == [1]
    assert {r["round"] for r in result.clicks} == {1}
    assert {row["round"] for row in result.interactive} == {0, 1, 2, 3}
    assert all(row["dsc"] == 1.0 for row in result.interactive if row["round"] >= 1)


def test_unannotated_voxels_are_never_clicked_and_not_scored(monkeypatch):
    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, 1, :] = 1
    gt[0, 2, :2] = 2
    gt[0, 2, 2:] = 255  # not annotated: the spleen's first click paints them, which is no error
    result = _evaluate_with_row_painting(monkeypatch, gt, rounds=3, ignore_label=255)
    assert {r["label"] for r in result.clicks} == {1, 2} and {r["round"] for r in result.clicks} == {1}
    assert all(row["dsc"] == 1.0 for row in result.interactive if row["round"] >= 1)


def test_without_diagnostics_nothing_is_recorded_and_the_scores_are_the_same(monkeypatch):
    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, 1, :] = 1
    gt[0, 2:, 1:3] = 2
    with_diagnostics = _evaluate_with_row_painting(monkeypatch, gt, rounds=4)
    standard = _evaluate_with_row_painting(monkeypatch, gt, rounds=4, diagnostics=False)
    assert standard.clicks is None and standard.round_changes is None
    assert set(standard.to_json()) == {"automatic", "interactive"}
    for mode in ("automatic", "interactive"):
        full, plain = getattr(with_diagnostics, mode), getattr(standard, mode)
        assert all("band_dsc" in row for row in full) and not any("band_dsc" in row for row in plain)
        assert [{k: v for k, v in row.items() if k != "band_dsc"} for row in full] == plain


def test_the_standard_report_is_the_same_with_or_without_diagnostics(monkeypatch, tmp_path):
    from s2vnet.evaluation.diagnostics.report import report_additions
    from s2vnet.evaluation.reports import write_reports

    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, 1, :] = 1
    gt[0, 2:, 1:3] = 2
    record = {"dataset": "rows"}
    reports = {}
    for diagnostics in (True, False):
        rows = _evaluate_with_row_painting(monkeypatch, gt, rounds=3, diagnostics=diagnostics)
        settings = _row_painting_settings(3, diagnostics=diagnostics)
        additions = report_additions(rows, settings) if diagnostics else None
        out = tmp_path / str(diagnostics)
        reports[diagnostics] = write_reports(out, rows, settings, record, additions)
        assert (out / "clicks.csv").is_file() == diagnostics
        header = (out / "results.csv").read_text().splitlines()[0]
        assert header.endswith("nsd,band_dsc" if diagnostics else "nsd")
        summary = (out / "summary.md").read_text()
        assert ("What the clicks did" in summary) == diagnostics and ("Boundary band" in summary) == diagnostics
        assert "HD95 was infinite" in summary.splitlines()[-1]
    full, standard = reports[True], reports[False]
    assert set(full) - set(standard) == {"clicks"}
    for key in ("dsc_per_round", "noc", "settings"):
        assert full[key] == standard[key]
    for setup in ("automatic", "interactive"):
        assert "band_dsc" in full[setup]["overall"] and "band_dsc" not in standard[setup]["overall"]
        trimmed = {k: v for k, v in full[setup]["overall"].items() if k != "band_dsc"}
        assert json.dumps(trimmed) == json.dumps(standard[setup]["overall"])


# --------------------------------------------------------------------------------------------
# band_dsc (s2vnet.evaluation.diagnostics.boundary_band)
# --------------------------------------------------------------------------------------------


def test_band_dsc_keeps_boundary_errors_and_corrects_the_rest() -> None:
    gt = np.zeros((30, 30), np.int64)
    gt[5:15, 5:15] = 1  # a 10 x 10 square
    pred = np.zeros_like(gt)
    pred[6:15, 5:15] = 1  # its top row missed: all inside the 1-voxel band
    pred[22:26, 22:26] = 1  # and a 4 x 4 invented region far away
    band = band_dsc(pred, gt, [1])
    # Only the missed row is left: prediction 90 voxels, all right, against 100.
    assert band[1] == pytest.approx(2 * 90 / 190)
    assert dice_score(pred == 1, gt == 1) < band[1]
    # A block missed 3 rows deep: what is left missed is its part in the band, row 5 and the
    # end columns 5 and 14 of rows 6-7 (14 voxels); the other 16 are corrected.
    deep = gt.copy()
    deep[5:8, 5:15] = 0
    assert band_dsc(deep, gt, [1])[1] == pytest.approx(2 * 86 / 186)
    # A band of 2 voxels: rows 5-6 and columns 5, 6, 13, 14 of row 7 (24 voxels).
    assert band_dsc(deep, gt, [1], width=2)[1] == pytest.approx(2 * 76 / 176)
    # The band is in-plane: a volume of one slice scores as the slice does (a 3D band would make
    # a one-slice organ all band).
    assert band_dsc(deep[None], gt[None], [1])[1] == pytest.approx(2 * 86 / 186)


def test_band_dsc_counts_an_organs_missed_or_invented_end_slices_as_correctable() -> None:
    # Slices 1-3 hold a 6 x 6 organ (36 voxels each, 108 in all).
    gt = np.zeros((6, 12, 12), np.int64)
    gt[1:4, 3:9, 3:9] = 1
    pred = gt.copy()
    pred[1] = 0  # its first cross-section missed: a click there can bring it back, not band
    pred[4, 3:9, 3:9] = 1  # an invented cross-section after its last: not band either
    pred[2, 3, 3:9] = 0  # one rim row missed on a slice both have: band
    assert band_dsc(pred, gt, [1])[1] == pytest.approx(2 * 102 / (102 + 108))
    # A 3D band would have kept every error (both end slices touch the organ's surface).
    assert dice_score(pred == 1, gt == 1) == pytest.approx(2 * 66 / (102 + 108))


def test_band_dsc_perfect_absent_and_bad_width() -> None:
    gt = np.zeros((4, 10, 10), np.int64)
    gt[1:3, 2:8, 2:8] = 2
    assert band_dsc(gt, gt, [2])[2] == 1.0
    pred = gt.copy()
    pred[0, 0, 0] = 3  # class 3 only predicted: nothing to compare with
    assert np.isnan(band_dsc(pred, gt, [3])[3])
    assert band_dsc(pred, gt, [3], protocol="word")[3] == 0.0  # as the WORD script scores it
    with pytest.raises(InputError, match="width=0"):
        band_dsc(gt, gt, [2], width=0)
    with pytest.raises(InputError, match="pred_labels"):
        band_dsc(gt[None, None], gt[None, None], [2])  # 4D


def test_evaluation_settings_reject_bad_values():
    assert EvaluationSettings().diagnostics is False  # the diagnostics run only when asked for
    with pytest.raises(InputError, match="band_width=0"):
        EvaluationSettings(diagnostics=True, band_width=0)
    with pytest.raises(InputError, match="rounds=-1"):
        EvaluationSettings(rounds=-1)
    with pytest.raises(InputError, match="protocol"):
        EvaluationSettings(protocol="nnunet")
