"""The standard evaluation report: results.json, results.csv, summary.md (the paper's Table 1
layout) and dsc_per_round.png (the paper's Fig. 5), from per-case rows.

A row is ``{"case", "class_id", "class_name", "dsc", "hd95", "nsd", "mode"}``; interactive rows
also carry ``"round"`` (round 0 is the automatic prediction the session starts from). The
diagnostics (:mod:`s2vnet.evaluation.diagnostics`, only with ``--diagnostics``) add their columns,
entries, files and paragraphs through :class:`ReportAdditions`; this module computes none of them.

Averaging conventions (docs/evaluation.md, "Metrics"): a class's mean is over the cases where the
metric is defined (NaN = both masks empty: left out); infinite HD95 (exactly one mask empty) is left
out of means and counted separately. The "Average" columns are the mean over classes of the class
means, as the paper's tables average over organs.
"""
import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from s2vnet.evaluation.settings import EvaluationSettings
from s2vnet.utils.atomic import atomic_path, write_json_atomic, write_text_atomic

METRICS = ("dsc", "hd95", "nsd")
"""The benchmark metrics of every row."""
NOC_THRESHOLDS = (0.85, 0.90)


@dataclass
class EvaluationRows:
    """The rows of one or more cases: automatic and interactive score rows and, with diagnostics,
    the click records and round changes (:mod:`s2vnet.evaluation.diagnostics.clicks`; None without)."""

    automatic: List[Dict] = field(default_factory=list)
    interactive: List[Dict] = field(default_factory=list)
    clicks: Optional[List[Dict]] = None
    round_changes: Optional[List[Dict]] = None

    def extend(self, other: "EvaluationRows") -> None:
        """Append ``other``'s rows (another case's) to these."""
        self.automatic += other.automatic
        self.interactive += other.interactive
        if other.clicks is not None:
            self.clicks = (self.clicks or []) + other.clicks
        if other.round_changes is not None:
            self.round_changes = (self.round_changes or []) + other.round_changes

    def to_json(self) -> Dict[str, List[Dict]]:
        """The rows as a case file holds them (the diagnostics' lists only when recorded)."""
        data = {"automatic": self.automatic, "interactive": self.interactive}
        if self.clicks is not None:
            data["clicks"] = self.clicks
        if self.round_changes is not None:
            data["round_changes"] = self.round_changes
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], metrics: Sequence[str] = METRICS) -> "EvaluationRows":
        """Rows read back from :meth:`to_json` output written through :func:`json_safe`: the
        ``metrics`` of every row become floats again (None -> NaN, "inf" -> inf)."""

        def restore(row):
            for metric in metrics:
                value = row.get(metric)
                row[metric] = math.nan if value is None else (math.inf if value == "inf" else float(value))
            return row

        return cls(
            automatic=[restore(r) for r in data["automatic"]],
            interactive=[restore(r) for r in data["interactive"]],
            clicks=data.get("clicks"),
            round_changes=data.get("round_changes"),
        )


@dataclass(frozen=True)
class ReportAdditions:
    """What the diagnostics add to the standard report (:func:`write_reports`).

    Attributes:
        metrics: extra per-row values, summarised, averaged and written as the metrics are.
        results: extra entries of results.json, after the standard ones.
        files: extra report files, name -> text.
        markdown: extra summary.md lines, after the rounds and NoC lines.
    """

    metrics: Tuple[str, ...] = ()
    results: Dict[str, Any] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)
    markdown: Tuple[str, ...] = ()


def _finite_mean(values: Iterable[float]) -> Optional[float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarize(rows: Sequence[Dict], metrics: Sequence[str] = METRICS) -> Dict:
    """Per-class and overall means of ``metrics``, and counts of undefined / infinite values."""
    by_class: Dict[int, List[Dict]] = defaultdict(list)
    for row in rows:
        by_class[row["class_id"]].append(row)
    per_class = {}
    for class_id in sorted(by_class):
        class_rows = by_class[class_id]
        entry = {"class_name": class_rows[0]["class_name"], "cases": len(class_rows)}
        for metric in metrics:
            values = [r[metric] for r in class_rows]
            entry[metric] = _finite_mean(values)
            entry[f"{metric}_undefined"] = sum(1 for v in values if v is None or (isinstance(v, float) and math.isnan(v)))
            entry[f"{metric}_infinite"] = sum(1 for v in values if isinstance(v, float) and math.isinf(v))
        per_class[class_id] = entry
    overall = {metric: _finite_mean(entry[metric] for entry in per_class.values()) for metric in metrics}
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


def format_value(value: Optional[float], scale: float = 1.0, digits: int = 2) -> str:
    """``value * scale`` with ``digits`` decimals, or "-" when it is missing or not finite."""
    return "-" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def table1_markdown(
    automatic: Sequence[Dict], interactive: Sequence[Dict], class_ids: Sequence[int], abbrevs: Sequence[str], final_round: Optional[int]
) -> str:
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
        cells = [name, format_value(overall["hd95"]), format_value(overall["dsc"], 100), format_value(overall["nsd"], 100)]
        cells += [format_value(per_class.get(str(c), {}).get("dsc"), 100) for c in class_ids]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reports(
    output_dir: Path,
    rows: EvaluationRows,
    settings: EvaluationSettings,
    record: Mapping[str, Any],
    additions: Optional[ReportAdditions] = None,
) -> Dict:
    """Write results.json, results.csv, summary.md and (with interactive rows) dsc_per_round.png.

    ``settings`` gives the classes, their Table-1 names and the number of rounds (NoC's "not
    reached"); ``record`` is the settings as results.json and summary.md list them. ``additions``
    (the diagnostics', :func:`s2vnet.evaluation.diagnostics.report.report_additions`) adds columns,
    results.json entries, files and summary.md lines. Returns the contents of results.json.
    """
    output_dir = Path(output_dir)
    additions = additions or ReportAdditions()
    metrics = METRICS + tuple(additions.metrics)
    automatic, interactive, max_rounds = rows.automatic, rows.interactive, settings.rounds
    per_case = [dict(r) for r in automatic] + [dict(r) for r in interactive]
    results = {
        "settings": dict(record),
        "per_case": per_case,
        "automatic": summarize(automatic, metrics) if automatic else None,
    }
    final_round = max((r["round"] for r in interactive), default=None) if interactive else None
    if interactive:
        results["interactive"] = summarize([r for r in interactive if r["round"] == final_round], metrics)
        results["interactive"]["rounds"] = final_round
        results["dsc_per_round"] = {str(k): v for k, v in dsc_per_round(interactive).items()}
        results["noc"] = {f"NoC@{int(t * 100)}": number_of_clicks(interactive, t, max_rounds) for t in NOC_THRESHOLDS}
    results.update(additions.results)
    write_json_atomic(output_dir / "results.json", json_safe(results))
    write_text_atomic(output_dir / "results.csv", csv_text(per_case, ["case", "mode", "round", "class_id", "class_name", *metrics]))
    for name, text in additions.files.items():
        write_text_atomic(output_dir / name, text)

    lines = ["# Evaluation summary", ""]
    lines += [f"- {key}: {value}" for key, value in record.items()]
    lines += ["", table1_markdown(automatic, interactive, settings.class_ids, settings.table_names, final_round)]
    if interactive:
        per_round = ", ".join(f"{r}: {format_value(v, 100)}" for r, v in dsc_per_round(interactive).items())
        lines.append("DSC (%) after each round (round 0 = automatic): " + per_round)
        lines.append("")
        lines.append(", ".join(f"{k} = {format_value(v)}" for k, v in results["noc"].items()) + f" (clicks per organ; {max_rounds} = not reached)")
        lines.append("")
        _plot_rounds(output_dir / "dsc_per_round.png", dsc_per_round(interactive))
    lines += additions.markdown
    counts = results["automatic"]["overall"] if automatic else results.get("interactive", {})
    if counts:
        lines.append(
            f"HD95 was infinite (one of prediction / ground truth empty) for {counts.get('hd95_infinite', 0)} case-class pairs "
            f"and DSC undefined (both empty) for {counts.get('dsc_undefined', 0)}; these are left out of the means."
        )
    write_text_atomic(output_dir / "summary.md", "\n".join(lines) + "\n")
    return results


def csv_text(rows: Sequence[Dict], fields: Sequence[str]) -> str:
    """CSV text of ``rows`` with the columns ``fields`` (a missing value is an empty cell)."""
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


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf float (in nested dicts, lists and tuples) turned into
    None/"inf"/"-inf", so that results.json is strict JSON any tool can read."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
