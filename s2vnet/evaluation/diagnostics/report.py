"""What the diagnostics add to the standard report (``tools/eval_volume.py --diagnostics``).

The band DSC column (``band_dsc``), the click summary (``clicks`` in results.json), clicks.csv and
their summary.md paragraphs, handed to :func:`s2vnet.evaluation.reports.write_reports` as one
:class:`s2vnet.evaluation.reports.ReportAdditions`.
"""
from typing import List

from s2vnet.evaluation.diagnostics.boundary_band import BAND_METRIC
from s2vnet.evaluation.diagnostics.clicks import CLICK_FIELDS, clicks_markdown, summarize_clicks
from s2vnet.evaluation.reports import METRICS, EvaluationRows, ReportAdditions, csv_text, format_value, summarize
from s2vnet.evaluation.settings import EvaluationSettings

__all__ = ["report_additions"]


def report_additions(rows: EvaluationRows, settings: EvaluationSettings) -> ReportAdditions:
    """The diagnostics' part of the report of ``rows`` (all cases), evaluated with ``settings``."""
    results, files, markdown = {}, {}, []
    if rows.clicks:
        summary = summarize_clicks(rows.clicks, rows.round_changes or [])
        results["clicks"] = summary
        files["clicks.csv"] = csv_text(rows.clicks, CLICK_FIELDS)
        markdown.append(clicks_markdown(summary))
    markdown += band_markdown(rows, settings.band_width)
    return ReportAdditions(metrics=(BAND_METRIC,), results=results, files=files, markdown=tuple(markdown))


def band_markdown(rows: EvaluationRows, band_width: int) -> List[str]:
    """The summary.md paragraph on the band DSC: the mean over classes, automatic and after the
    last round, beside the DSC (no lines without rows)."""
    interactive = rows.interactive
    final_round = max((r["round"] for r in interactive), default=None) if interactive else None
    setups = (("automatic", rows.automatic), (f"after round {final_round}", [r for r in interactive if r["round"] == final_round]))
    band = [(name, summarize(setup_rows, METRICS + (BAND_METRIC,))["overall"]) for name, setup_rows in setups if setup_rows]
    if not band:
        return []
    return [
        f"Boundary band: with only the errors within {band_width} pixel(s) of the true outline left "
        "(in-plane, on slices where both prediction and ground truth have the organ), mean DSC would be "
        + ", ".join(f"{format_value(o[BAND_METRIC], 100)} ({name}, now {format_value(o['dsc'], 100)})" for name, o in band)
        + "; the difference is the error in regions missed or invented (organ ends included), which clicks can point at.",
        "",
    ]
