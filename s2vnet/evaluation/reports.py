"""Evaluation reports: results.json, results.csv, summary.md (the paper's Table 1 layout) and
dsc_per_round.png (the paper's Fig. 5), from per-case rows; clicks.csv from click records.

A row is ``{"case", "class_id", "class_name", "dsc", "hd95", "nsd", "band_dsc", "mode"}``; interactive rows
also carry ``"round"`` (round 0 is the automatic prediction the session starts from).

Averaging conventions (DESIGN §7): a class's mean is over the cases where the metric is defined
(NaN = both masks empty: left out); infinite HD95 (exactly one mask empty) is left out of means
and counted separately. The "Average" columns are the mean over classes of the class means, as
the paper's tables average over organs.
"""
import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from s2vnet.evaluation.click_diagnostics import CLICK_FIELDS, clicks_markdown, summarize_clicks
from s2vnet.utils.atomic import atomic_path, write_json_atomic, write_text_atomic

# band_dsc: the DSC left with only the errors in the ground truth's boundary band (a diagnostic, see
# s2vnet.evaluation.metrics.boundary_band_dsc); band_dsc - dsc is what correcting the rest could gain.
# Where the ground truth lacks the class it is NaN (left out of means), or 0 under the WORD protocol.
METRICS = ("dsc", "hd95", "nsd", "band_dsc")
NOC_THRESHOLDS = (0.85, 0.90)


def _finite_mean(values: Iterable[float]) -> Optional[float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarize(rows: Sequence[Dict]) -> Dict:
    """Per-class and overall means, and counts of undefined / infinite values."""
    by_class: Dict[int, List[Dict]] = defaultdict(list)
    for row in rows:
        by_class[row["class_id"]].append(row)
    per_class = {}
    for class_id in sorted(by_class):
        class_rows = by_class[class_id]
        entry = {"class_name": class_rows[0]["class_name"], "cases": len(class_rows)}
        for metric in METRICS:
            values = [r[metric] for r in class_rows]
            entry[metric] = _finite_mean(values)
            entry[f"{metric}_undefined"] = sum(1 for v in values if v is None or (isinstance(v, float) and math.isnan(v)))
            entry[f"{metric}_infinite"] = sum(1 for v in values if isinstance(v, float) and math.isinf(v))
        per_class[class_id] = entry
    overall = {metric: _finite_mean(entry[metric] for entry in per_class.values()) for metric in METRICS}
    overall["hd95_infinite"] = sum(entry["hd95_infinite"] for entry in per_class.values())
    overall["dsc_undefined"] = sum(entry["dsc_undefined"] for entry in per_class.values())
    overall["cases"] = len({r["case"] for r in rows})
    return {"per_class": {str(k): v for k, v in per_class.items()}, "overall": overall}


def dsc_per_round(rows: Sequence[Dict]) -> Dict[int, Optional[float]]:
    """Mean DSC (over classes of the class means) after each interactive round."""
    rounds = sorted({r["round"] for r in rows if r.get("round") is not None})
    return {r: summarize([row for row in rows if row.get("round") == r])["overall"]["dsc"] for r in rounds}


def number_of_clicks(rows: Sequence[Dict], threshold: float, max_rounds: int) -> Optional[float]:
    """NoC@threshold: mean over (case, class) of the clicks needed to reach ``threshold`` DSC.

    Every class with errors gets one click per round, so the clicks a class needed are the first
    round whose DSC reaches the threshold (0 if the automatic prediction already does); a class
    that never reaches it counts as ``max_rounds`` (the usual convention).
    """
    per_object: Dict[tuple, List[tuple]] = defaultdict(list)
    for row in rows:
        if row.get("round") is not None and row["dsc"] is not None and not math.isnan(row["dsc"]):
            per_object[(row["case"], row["class_id"])].append((row["round"], row["dsc"]))
    if not per_object:
        return None
    counts = []
    for history in per_object.values():
        reached = [r for r, dsc in sorted(history) if dsc >= threshold]
        counts.append(reached[0] if reached else max_rounds)
    return float(np.mean(counts))


def _fmt(value: Optional[float], scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def table1_markdown(automatic: Sequence[Dict], interactive: Sequence[Dict], class_ids: Sequence[int], abbrevs: Sequence[str], final_round: Optional[int]) -> str:
    """A Markdown table laid out like the paper's Table 1: average HD95 / DSC / NSD, then the DSC per organ."""
    header = ["Setup", "HD95 (mm) ↓", "DSC (%) ↑", "NSD (%) ↑"] + [abbrevs[c] for c in class_ids]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    setups = [("Automatic", automatic)]
    if interactive and final_round is not None:
        setups.append((f"Interactive ({final_round} rounds)", [r for r in interactive if r.get("round") == final_round]))
    for name, rows in setups:
        if not rows:
            continue
        summary = summarize(rows)
        overall, per_class = summary["overall"], summary["per_class"]
        cells = [name, _fmt(overall["hd95"]), _fmt(overall["dsc"], 100), _fmt(overall["nsd"], 100)]
        cells += [_fmt(per_class.get(str(c), {}).get("dsc"), 100) for c in class_ids]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reports(
    output_dir: Path,
    automatic: Sequence[Dict],
    interactive: Sequence[Dict],
    class_ids: Sequence[int],
    class_names: Sequence[str],
    abbrevs: Sequence[str],
    max_rounds: int,
    settings: Dict,
    clicks: Sequence[Dict] = (),
    round_changes: Sequence[Dict] = (),
) -> Dict:
    """Write results.json, results.csv, summary.md and (with interactive rows) dsc_per_round.png;
    with click records (:mod:`s2vnet.evaluation.click_diagnostics`) also clicks.csv, and their
    summary in results.json (``clicks``) and summary.md."""
    output_dir = Path(output_dir)
    per_case = [dict(r) for r in automatic] + [dict(r) for r in interactive]
    results = {
        "settings": settings,
        "per_case": per_case,
        "automatic": summarize(automatic) if automatic else None,
    }
    final_round = max((r["round"] for r in interactive), default=None) if interactive else None
    if interactive:
        results["interactive"] = summarize([r for r in interactive if r["round"] == final_round])
        results["interactive"]["rounds"] = final_round
        results["dsc_per_round"] = {str(k): v for k, v in dsc_per_round(interactive).items()}
        results["noc"] = {f"NoC@{int(t * 100)}": number_of_clicks(interactive, t, max_rounds) for t in NOC_THRESHOLDS}
    if clicks:
        results["clicks"] = summarize_clicks(clicks, round_changes)
    write_json_atomic(output_dir / "results.json", _json_safe(results))
    write_text_atomic(output_dir / "results.csv", _csv_text(per_case, ["case", "mode", "round", "class_id", "class_name", *METRICS]))
    if clicks:
        write_text_atomic(output_dir / "clicks.csv", _csv_text(clicks, CLICK_FIELDS))

    lines = ["# Evaluation summary", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items()]
    lines += ["", table1_markdown(automatic, interactive, class_ids, abbrevs, final_round)]
    if interactive:
        lines.append("DSC (%) after each round (round 0 = automatic): " + ", ".join(f"{r}: {_fmt(v, 100)}" for r, v in dsc_per_round(interactive).items()))
        lines.append("")
        lines.append(", ".join(f"{k} = {_fmt(v)}" for k, v in results["noc"].items()) + f" (clicks per organ; {max_rounds} = not reached)")
        lines.append("")
        _plot_rounds(output_dir / "dsc_per_round.png", dsc_per_round(interactive))
    if clicks:
        lines.append(clicks_markdown(results["clicks"]))
    band = [(name, results[mode]["overall"]) for name, mode in (("automatic", "automatic"), (f"after round {final_round}", "interactive")) if results.get(mode)]
    if band:
        lines.append(
            f"Boundary band: with only the errors within {settings.get('boundary_band_pixels', 1)} pixel(s) of the true outline left "
            "(in-plane, on slices where both prediction and ground truth have the organ), mean DSC would be "
            + ", ".join(f"{_fmt(o['band_dsc'], 100)} ({name}, now {_fmt(o['dsc'], 100)})" for name, o in band)
            + "; the difference is the error in regions missed or invented (organ ends included), which clicks can point at."
        )
        lines.append("")
    counts = results["automatic"]["overall"] if automatic else results.get("interactive", {})
    if counts:
        lines.append(
            f"HD95 was infinite (one of prediction / ground truth empty) for {counts.get('hd95_infinite', 0)} case-class pairs "
            f"and DSC undefined (both empty) for {counts.get('dsc_undefined', 0)}; these are left out of the means."
        )
    write_text_atomic(output_dir / "summary.md", "\n".join(lines) + "\n")
    return results


def _csv_text(rows: Sequence[Dict], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in fields})
    return buffer.getvalue()


def _plot_rounds(path: Path, per_round: Dict[int, Optional[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r, v in per_round.items() if v is not None]
    values = [per_round[r] * 100 for r in rounds]
    figure, axis = plt.subplots(figsize=(5, 3.5), dpi=120)
    axis.plot(rounds, values, marker="o")
    axis.set_xlabel("interaction round (0 = automatic)")
    axis.set_ylabel("mean DSC (%)")
    axis.set_title("DSC per interaction round")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp)
    plt.close(figure)


def _json_safe(value):
    """NaN/inf -> None/"inf" so that results.json is strict JSON any tool can read."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
