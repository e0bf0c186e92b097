"""Click records of the interactive evaluation, against hand-made labels and scores."""
import numpy as np
import pytest
import torch

from s2vnet.data.clicks import Click
from s2vnet.evaluation.click_diagnostics import click_records, clicks_markdown, fused_scores_at, round_change, summarize_clicks

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
    after = before.copy()
    after[1, 0, 0] = 1  # the positive click's voxel became liver
    clicks = [Click(z=1, y=0, x=0, label=1), Click(z=0, y=1, x=1, label=0)]
    scores_before = [np.array([0.9, 0.3, 0.1]), np.array([0.4, 0.2, 0.8])]
    scores_after = [np.array([0.7, 0.95, 0.1]), np.array([0.6, 0.2, 0.8])]
    first = click_records("c", 1, clicks[:1], before, after, scores_before[:1], scores_after[:1], NAMES)
    assert first[0]["kind"] == "first"
    records = click_records("c", 2, clicks, before, after, scores_before, scores_after, NAMES)
    positive, negative = records
    assert positive == {
        "case": "c", "round": 2, "z": 1, "y": 0, "x": 0, "label": 1, "class_name": "liver", "kind": "positive",
        "label_before": 0, "label_after": 1, "score_before": 0.3, "score_after": 0.95, "best_other_after": 0.7,
    }
    assert negative["kind"] == "negative" and negative["best_other_after"] == 0.8 and negative["label_after"] == 0


def test_round_change_counts_voxels_made_right_and_made_wrong():
    gt = np.array([[[1, 1, 0, 0]]])
    before = np.array([[[1, 0, 0, 2]]])  # right, wrong, right, wrong
    after = np.array([[[0, 1, 0, 2]]])  # wrong, right, right, wrong
    assert round_change("c", 3, before, after, gt) == {"case": "c", "round": 3, "fixed": 1, "broken": 1}


def test_summary_counts_clicks_on_wrong_voxels_and_their_medians():
    def record(kind, label, before, after, s_before, s_after, other, round_index=2):
        return {"kind": kind, "label": label, "label_before": before, "label_after": after, "round": round_index,
                "score_before": s_before, "score_after": s_after, "best_other_after": other}

    records = [
        record("first", 1, 1, 1, 0.9, 0.95, 0.1, round_index=1),
        record("positive", 1, 0, 1, 0.2, 0.9, 0.6),  # on a wrong voxel, fixed
        record("positive", 1, 0, 0, 0.4, 0.7, 0.95),  # on a wrong voxel, still wrong
        record("positive", 2, 1, 1, 0.1, 0.2, 0.9),  # its voxel was wrong (1, not 2) and still is
        record("negative", 0, 2, 0, 0.3, 0.9, 0.5),
    ]
    changes = [{"round": 1, "fixed": 5, "broken": 2}, {"round": 2, "fixed": 7, "broken": 1}, {"round": 2, "fixed": 1, "broken": 0}]
    summary = summarize_clicks(records, changes)
    assert summary["by_kind"]["first"] == {
        "clicks": 1, "on_wrong_voxel": 0, "own_voxel_fixed": 0,
        "median_score_before": None, "median_score_after": None, "median_best_other_after": None,
    }
    positive = summary["by_kind"]["positive"]
    assert (positive["clicks"], positive["on_wrong_voxel"], positive["own_voxel_fixed"]) == (3, 3, 1)
    assert positive["median_score_before"] == pytest.approx(0.2) and positive["median_best_other_after"] == pytest.approx(0.9)
    assert summary["voxels_per_round"] == {"1": {"fixed": 5, "broken": 2}, "2": {"fixed": 8, "broken": 1}}
    text = clicks_markdown(summary)
    assert "first clicks (round 1): 1, none on a wrong voxel" in text
    assert "later positive clicks: 1 of 3 made their own (wrong) voxel right;" in text
    assert "later negative clicks: 1 of 1" in text and "1: +5 / -2, 2: +8 / -1" in text
    assert clicks_markdown(summarize_clicks([], [])) == ""
