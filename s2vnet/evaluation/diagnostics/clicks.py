"""What each simulated click did, for the interactive evaluation's reports (``--diagnostics``).

The interactive DSC per round says how much the clicks helped, not why. These records say, per
click: was its own voxel wrong before the round, is it right after, and what did eq. 9's fused
scores look like there (its class before and after the round, the best other class after). A
click of class c only raises class c's scores (eq. 9 takes a per-class maximum over rounds), so a
click whose class still loses at its own voxel shows up as ``score_after <= best_other_after``
(ties go to the lower class id). Per round, the voxels the round fixed and broke anywhere in the
volume say whether a click's effect spread well or badly.

A record: ``{"case", "round", "z", "y", "x", "label", "class_name", "kind", "label_before",
"label_after", "score_before", "score_after", "best_other_after", "error_voxels",
"error_voxels_fixed", "error_depth_px"}``; scores are eq. 9's fused class scores on the native
grid, in [0, 1]. The ``error_*`` fields describe the click's *error region* (:func:`error_region`):
the face-connected voxels, around the click, with the same true and predicted label as its voxel;
its size, how many of its voxels the round made right, and the click's in-plane depth in it
(pixels to the region's edge on the clicked slice: 1 on a one- or two-pixel-wide sliver). They are
None for a click on a voxel that was already right. ``kind`` is one of :data:`CLICK_KINDS`:

* ``first``: round 1, the protocol's click deep inside the class (usually on a voxel already right);
* ``missed``: a later click of an organ on a voxel predicted as background;
* ``wrong_organ``: a later click of an organ on a voxel predicted as another organ (the protocol's
  click on one organ's false positive where another organ really is, or on a false negative);
* ``negative``: a later click of the background on an organ's false positive.

Later clicks are on a wrong voxel by construction. Two classes' error regions can share their
deepest voxel (one organ's false positive is another's false negative); the protocol then clicks
it twice in one round, which is one click of the user's and is recorded once.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence

import numpy as np
import torch
from scipy import ndimage

from s2vnet.data.clicks import Click, inplane_depth
from s2vnet.utils.arrays import mask_box

# Each kind of click, with how summary.md names it.
CLICK_KINDS = {
    "first": "first clicks (round 1)",
    "missed": "later clicks of an organ on predicted background",
    "wrong_organ": "later clicks of an organ on another predicted organ",
    "negative": "later clicks of the background",
}

# Fields of a click record, in the order of clicks.csv.
CLICK_FIELDS = (
    "case", "round", "z", "y", "x", "label", "class_name", "kind",
    "label_before", "label_after", "score_before", "score_after", "best_other_after",
    "error_voxels", "error_voxels_fixed", "error_depth_px",
)

#: Bins of a later click's in-plane depth in its error region, in pixels (upper bounds, the last
#: open). Depth 1 means the region is one or two pixels wide at the click: a sliver along an
#: outline, narrower than one cell of a stride-2 mask grid.
DEPTH_BINS = (("<=1", 1.0), ("<=2", 2.0), ("<=4", 4.0), (">4", float("inf")))


class FusedScores(Protocol):
    """What the records read from an interactive session (:class:`s2vnet.inference.session.InteractiveSession`)."""

    def native_fused_scores(self, z: int) -> torch.Tensor: ...


def click_kind(round_index: int, label: int, label_before: int) -> str:
    """One of :data:`CLICK_KINDS` for a click of ``label`` on a voxel predicted ``label_before``."""
    if round_index == 1:
        return "first"
    if label == 0:
        return "negative"
    return "missed" if label_before == 0 else "wrong_organ"


def fused_scores_at(session: FusedScores, clicks: Sequence[Click]) -> List[np.ndarray]:
    """Eq. 9's fused class scores (K,) of ``session`` at each click's voxel (each clicked slice fused once)."""
    by_slice: Dict[int, np.ndarray] = {}
    for click in clicks:
        if click.z not in by_slice:
            by_slice[click.z] = session.native_fused_scores(click.z).float().cpu().numpy()
    return [by_slice[c.z][:, c.y, c.x] for c in clicks]


def error_region(click: Click, gt: np.ndarray, labels_before: np.ndarray) -> Optional[np.ndarray]:
    """The click's error region: the face-connected component, containing the click's voxel, of the
    voxels whose (true, predicted) labels equal the voxel's; None when the voxel was right.

    This is the part of the protocol's clicked error component (one class's false negatives or
    false positives, :func:`s2vnet.data.clicks.corrective_clicks`) that is wrong in the same way as
    the clicked voxel, so one click of one label could fix all of it. A (Z, Y, X) bool array."""
    true, predicted = int(gt[click.z, click.y, click.x]), int(labels_before[click.z, click.y, click.x])
    if true == predicted:
        return None
    same = (gt == true) & (labels_before == predicted)
    # Labelling only the errors' bounding box keeps this cheap on large CT volumes: one of the two
    # labels is an organ, so the box is at most that organ's.
    box = mask_box(same)
    components, _ = ndimage.label(same[box])  # face connectivity, as the protocol's
    region = np.zeros_like(same)
    inside = tuple(index - s.start for index, s in zip((click.z, click.y, click.x), box))
    region[box] = components == components[inside]
    return region


def click_records(
    case: str,
    round_index: int,
    clicks: Sequence[Click],
    labels_before: np.ndarray,
    labels_after: np.ndarray,
    scores_before: Sequence[np.ndarray],
    scores_after: Sequence[np.ndarray],
    class_names: Sequence[str],
    gt: Optional[np.ndarray] = None,
) -> List[Dict]:
    """One record per click of a round (repeats once), from the labels and fused scores before
    and after it; ``scores_before`` and ``scores_after`` follow ``clicks``. With the ground truth
    ``gt``, the ``error_*`` fields are filled for clicks on a wrong voxel (else they are None)."""
    records, seen = [], set()
    for click, before, after in zip(clicks, scores_before, scores_after, strict=True):
        if click in seen:
            continue
        seen.add(click)
        others = np.delete(after, click.label)
        label_before = int(labels_before[click.z, click.y, click.x])
        region = error_region(click, gt, labels_before) if gt is not None else None
        records.append({
            "case": case,
            "round": round_index,
            "z": int(click.z), "y": int(click.y), "x": int(click.x),
            "label": int(click.label),
            "class_name": class_names[click.label],
            "kind": click_kind(round_index, int(click.label), label_before),
            "label_before": label_before,
            "label_after": int(labels_after[click.z, click.y, click.x]),
            "score_before": float(before[click.label]),
            "score_after": float(after[click.label]),
            "best_other_after": float(others.max()) if others.size else 0.0,
            "error_voxels": None if region is None else int(region.sum()),
            "error_voxels_fixed": None if region is None else int((labels_after[region] == gt[region]).sum()),
            # Depth as the protocol measures it (:func:`inplane_depth`), in pixels rather than mm.
            "error_depth_px": None if region is None else float(inplane_depth(region[click.z])[click.y, click.x]),
        })
    return records


@dataclass
class ClickRecorder:
    """Collects, round by round, the click records (:func:`click_records`) and round changes
    (:func:`round_change`) of one case's interactive evaluation.

    Call :meth:`before_round` with a round's clicks before they are given to the session, and
    :meth:`after_round` once the session has decoded them.
    """

    case: str
    class_names: Sequence[str]
    gt: np.ndarray
    records: List[Dict] = field(default_factory=list)
    round_changes: List[Dict] = field(default_factory=list)
    _scores_before: List[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def before_round(self, session: FusedScores, clicks: Sequence[Click]) -> None:
        """Read the fused scores at the round's clicks before the session sees them."""
        self._scores_before = fused_scores_at(session, clicks)

    def after_round(
        self, session: FusedScores, round_index: int, clicks: Sequence[Click], labels_before: np.ndarray, labels_after: np.ndarray
    ) -> None:
        """Record what the round's clicks did, from the labels before and after it."""
        scores_after = fused_scores_at(session, clicks)
        self.records += click_records(
            self.case, round_index, clicks, labels_before, labels_after, self._scores_before, scores_after, self.class_names, self.gt
        )
        self.round_changes.append(round_change(self.case, round_index, labels_before, labels_after, self.gt, clicks))


#: Bins of :func:`round_change`: how many slices a changed voxel lies from the nearest click of
#: the class it changed to. Eq. 9 only raises clicked classes, so every voxel a round changes took
#: the label of a class clicked in that round; "unclicked" stays empty unless that breaks.
DISTANCE_BINS = ("0-1", "2-4", "5+", "unclicked")


def _distance_bin(slices: int) -> str:
    return "0-1" if slices <= 1 else ("2-4" if slices <= 4 else "5+")


def round_change(
    case: str, round_index: int, labels_before: np.ndarray, labels_after: np.ndarray, gt: np.ndarray, clicks: Sequence[Click] = ()
) -> Dict:
    """Voxels a round made right (``fixed``) and made wrong (``broken``), over the whole volume,
    and the same counts by distance in slices from the round's nearest click of the class each
    changed voxel took (``by_distance``: :data:`DISTANCE_BINS` -> ``{"fixed", "broken"}``).

    A click's centroid is propagated through the volume (§4.1) and eq. 9 fuses its scores on every
    slice it reaches, so a round can change voxels far from its clicks; the bins say whether what
    it does there helps."""
    right_before, right_after = labels_before == gt, labels_after == gt
    fixed, broken = right_after & ~right_before, right_before & ~right_after
    click_slices: Dict[int, List[int]] = {}
    for click in clicks:
        click_slices.setdefault(int(click.label), []).append(click.z)
    by_distance = {name: {"fixed": 0, "broken": 0} for name in DISTANCE_BINS}
    for what, mask in (("fixed", fixed), ("broken", broken)):
        z = np.nonzero(mask)[0]
        taken = labels_after[mask]
        for label in np.unique(taken).tolist():
            mine = z[taken == label]
            if label not in click_slices:
                by_distance["unclicked"][what] += int(mine.size)
                continue
            nearest = np.abs(mine[:, None] - np.asarray(click_slices[label])[None, :]).min(axis=1)
            for distance, count in zip(*np.unique(nearest, return_counts=True)):
                by_distance[_distance_bin(int(distance))][what] += int(count)
    return {
        "case": case,
        "round": round_index,
        "fixed": int(fixed.sum()),
        "broken": int(broken.sum()),
        "by_distance": by_distance,
    }


def _median(values: List[float]) -> Optional[float]:
    return float(np.median(values)) if values else None


def summarize_clicks(records: Sequence[Dict], changes: Sequence[Dict]) -> Dict:
    """Per kind of click: how many, how many were on a wrong voxel, how many of those that round
    made right, and the median fused scores at those clicks; per round: voxels fixed and broken."""
    by_kind = {}
    for kind in CLICK_KINDS:
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
    by_distance = {
        name: {what: sum(c["by_distance"][name][what] for c in changes if "by_distance" in c) for what in ("fixed", "broken")}
        for name in DISTANCE_BINS
    }
    return {
        "by_kind": by_kind,
        "voxels_per_round": per_round,
        "voxels_by_click_distance": by_distance,
        "later_clicks_by_depth": _by_depth([r for r in records if r["kind"] != "first"]),
    }


def _by_depth(records: Sequence[Dict]) -> Dict[str, Dict[str, int]]:
    """Per :data:`DEPTH_BINS` bin: the clicks, their error regions' voxels and the voxels fixed."""
    bins = {name: {"clicks": 0, "error_voxels": 0, "error_voxels_fixed": 0} for name, _ in DEPTH_BINS}
    for record in records:
        depth = record.get("error_depth_px")
        if depth is None:  # a record without ground truth, or on a voxel already right
            continue
        name = next(name for name, upper in DEPTH_BINS if depth <= upper)
        bins[name]["clicks"] += 1
        bins[name]["error_voxels"] += record["error_voxels"]
        bins[name]["error_voxels_fixed"] += record["error_voxels_fixed"]
    return bins


def clicks_markdown(summary: Dict) -> str:
    """The summary.md paragraph on what the clicks did."""
    lines = []
    for kind, what in CLICK_KINDS.items():
        stats = summary["by_kind"][kind]
        wrong = stats["on_wrong_voxel"]
        if not wrong:
            if stats["clicks"]:
                lines.append(f"- {what}: {stats['clicks']}, none on a wrong voxel")
            continue
        already_right = stats["clicks"] - wrong
        lines.append(
            f"- {what}: {stats['own_voxel_fixed']} of {wrong} made their own (wrong) voxel right"
            + (f" ({already_right} more were on a voxel already right)" if already_right else "")
            + f"; at those {wrong} the clicked class's fused score went from {stats['median_score_before']:.2f} "
            f"to {stats['median_score_after']:.2f} (median), and the best other class's is {stats['median_best_other_after']:.2f} after the round"
        )
    voxels = ", ".join(f"{r}: +{v['fixed']} / -{v['broken']}" for r, v in summary["voxels_per_round"].items())
    if voxels:
        lines.append(f"- voxels fixed / broken by each round: {voxels}")
    distances = summary.get("voxels_by_click_distance", {})
    if any(v["fixed"] or v["broken"] for v in distances.values()):
        lines.append(
            "- voxels fixed / broken in all rounds, by slices from the round's nearest click of the class they took: "
            + ", ".join(f"{name}: +{v['fixed']} / -{v['broken']}" for name, v in distances.items() if v["fixed"] or v["broken"])
        )
    depths = summary.get("later_clicks_by_depth", {})
    if any(v["clicks"] for v in depths.values()):
        lines.append(
            "- later clicks by their in-plane depth in their error region (pixels to its edge on the clicked slice; "
            "the region: connected voxels with the click's true and predicted labels), and the region voxels the round fixed: "
            + ", ".join(
                f"{name} px: {v['clicks']} clicks, {v['error_voxels_fixed']} of {v['error_voxels']} "
                f"({100 * v['error_voxels_fixed'] / max(v['error_voxels'], 1):.0f}%)"
                for name, v in depths.items() if v["clicks"]
            )
        )
    if not lines:
        return ""
    return "What the clicks did (per click: clicks.csv):\n\n" + "\n".join(lines) + "\n"
