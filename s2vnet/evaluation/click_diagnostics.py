"""What each simulated click did, for the interactive evaluation's reports.

The interactive DSC per round says how much the clicks helped, not why. These records say, per
click: was its own voxel wrong before the round, is it right after, and what did eq. 9's fused
scores look like there (its class before and after the round, the best other class after). A
click of class c only raises class c's scores (eq. 9 takes a per-class maximum over rounds), so a
click whose class still loses at its own voxel shows up as ``score_after < best_other_after``.
Per round, the voxels the round fixed and broke anywhere in the volume say whether a click's
effect spread well or badly.

A record: ``{"case", "round", "z", "y", "x", "label", "class_name", "kind", "label_before",
"label_after", "score_before", "score_after", "best_other_after"}``, where ``kind`` is
``"first"`` (round 1, the protocol's click deep inside the class), ``"positive"`` (a later click of
a foreground class, on a voxel the prediction gave to another class) or ``"negative"`` (a later
click of the background class, on a false positive); scores are eq. 9's fused class scores on the
native grid, in [0, 1].
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

# Fields of a click record, in the order of clicks.csv.
CLICK_FIELDS = (
    "case", "round", "z", "y", "x", "label", "class_name", "kind",
    "label_before", "label_after", "score_before", "score_after", "best_other_after",
)


def fused_scores_at(session, clicks: Sequence) -> List[np.ndarray]:
    """Eq. 9's fused class scores (K,) of ``session`` at each click's voxel (one slice decode per slice)."""
    by_slice: Dict[int, np.ndarray] = {}
    for click in clicks:
        if click.z not in by_slice:
            by_slice[click.z] = session.native_fused_scores(click.z).float().cpu().numpy()
    return [by_slice[c.z][:, c.y, c.x] for c in clicks]


def click_records(
    case: str,
    round_index: int,
    clicks: Sequence,
    labels_before: np.ndarray,
    labels_after: np.ndarray,
    scores_before: Sequence[np.ndarray],
    scores_after: Sequence[np.ndarray],
    class_names: Sequence[str],
) -> List[Dict]:
    """One record per click of a round, from the labels and fused scores before and after it."""
    records = []
    for click, before, after in zip(clicks, scores_before, scores_after):
        others = np.delete(after, click.label)
        kind = "first" if round_index == 1 else ("negative" if click.label == 0 else "positive")
        records.append({
            "case": case,
            "round": round_index,
            "z": int(click.z), "y": int(click.y), "x": int(click.x),
            "label": int(click.label),
            "class_name": class_names[click.label],
            "kind": kind,
            "label_before": int(labels_before[click.z, click.y, click.x]),
            "label_after": int(labels_after[click.z, click.y, click.x]),
            "score_before": float(before[click.label]),
            "score_after": float(after[click.label]),
            "best_other_after": float(others.max()) if others.size else 0.0,
        })
    return records


def round_change(case: str, round_index: int, labels_before: np.ndarray, labels_after: np.ndarray, gt: np.ndarray) -> Dict:
    """Voxels a round made right (``fixed``) and made wrong (``broken``), over the whole volume."""
    right_before, right_after = labels_before == gt, labels_after == gt
    return {
        "case": case,
        "round": round_index,
        "fixed": int((right_after & ~right_before).sum()),
        "broken": int((right_before & ~right_after).sum()),
    }


def _median(values: List[float]) -> Optional[float]:
    return float(np.median(values)) if values else None


def summarize_clicks(records: Sequence[Dict], changes: Sequence[Dict]) -> Dict:
    """Per kind of click: how many, how many were on a wrong voxel, how many of those that round
    made right, and the median fused scores at those clicks; per round: voxels fixed and broken."""
    by_kind = {}
    for kind in ("first", "positive", "negative"):
        mine = [r for r in records if r["kind"] == kind]
        wrong = [r for r in mine if r["label_before"] != r["label"]]
        by_kind[kind] = {
            "clicks": len(mine),
            "on_wrong_voxel": len(wrong),
            "own_voxel_fixed": sum(r["label_after"] == r["label"] for r in wrong),
            "median_score_before": _median([r["score_before"] for r in wrong]),
            "median_score_after": _median([r["score_after"] for r in wrong]),
            "median_best_other_after": _median([r["best_other_after"] for r in wrong]),
        }
    rounds = sorted({c["round"] for c in changes})
    per_round = {
        str(k): {
            "fixed": sum(c["fixed"] for c in changes if c["round"] == k),
            "broken": sum(c["broken"] for c in changes if c["round"] == k),
        }
        for k in rounds
    }
    return {"by_kind": by_kind, "voxels_per_round": per_round}


def clicks_markdown(summary: Dict) -> str:
    """The summary.md paragraph on what the clicks did."""
    lines = []
    for kind, what in (("first", "first clicks (round 1)"), ("positive", "later positive clicks"), ("negative", "later negative clicks")):
        k = summary["by_kind"][kind]
        if not k["on_wrong_voxel"]:
            if k["clicks"]:
                lines.append(f"- {what}: {k['clicks']}, none on a wrong voxel")
            continue
        already_right = k["clicks"] - k["on_wrong_voxel"]
        lines.append(
            f"- {what}: {k['own_voxel_fixed']} of {k['on_wrong_voxel']} made their own (wrong) voxel right"
            + (f" ({already_right} more were on a voxel already right)" if already_right else "")
            + f"; at those {k['on_wrong_voxel']} the clicked class's fused score went from {k['median_score_before']:.2f} "
            f"to {k['median_score_after']:.2f} (median), and the best other class's is {k['median_best_other_after']:.2f}"
        )
    voxels = ", ".join(f"{r}: +{v['fixed']} / -{v['broken']}" for r, v in summary["voxels_per_round"].items())
    if voxels:
        lines.append(f"- voxels fixed / broken by each round: {voxels}")
    if not lines:
        return ""
    return "What the clicks did (per click: clicks.csv):\n\n" + "\n".join(lines) + "\n"
