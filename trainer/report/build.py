"""``m2f report``: metrics from the saved predictions, tables, plots, the paper side by side.

Every number is computed with scikit-learn from ``predictions_{dev,test}.csv`` of each seed (the
files a reader can re-check), never from values cached during training. For several seeds the
headline is the mean with the sample standard deviation (ddof = 1). Into each run directory go
``report.md``, ``report.json``, ``confusion.png`` (test confusion summed over seeds) and
``curves.png`` (train loss and dev weighted F1 per epoch). Several run directories also give one
comparison table (ablations).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from trainer.dialogue.run_files import read_metrics, write_json
from trainer.report.plots import plot_confusion, plot_curves
from trainer.report.summary import summarize_run
from trainer.report.tables import comparison_table, render_markdown, table2

__all__ = ["report", "write_report"]

logger = logging.getLogger(__name__)


def write_report(run_dir: str | Path) -> dict:
    """Write ``report.md``, ``report.json``, ``confusion.png``, ``curves.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    summary = summarize_run(run_dir)
    for warning in summary["warnings"]:
        logger.warning("%s", warning)
    write_json(run_dir / "report.json", summary)
    (run_dir / "report.md").write_text(render_markdown(summary), encoding="utf-8")
    if summary["test"] is not None:
        plot_confusion(
            summary["test"]["confusion"],
            summary["classes"],
            run_dir / "confusion.png",
            f"test, {summary['modalities']} {summary['fusion']}, {len(summary['seeds_done'])} seed(s)",
        )
    plot_curves(
        {f"seed{s['seed']}": read_metrics(s["dir"]) for s in summary["per_seed"]}, run_dir / "curves.png"
    )
    return summary


def report(run_dirs: Sequence[str | Path], compare_out: str | Path | None = None) -> str:
    """``m2f report``: a report in each run folder; returns the comparison table and the Table 2 view
    (:func:`trainer.report.tables.table2`), also written to ``compare_out`` when given."""
    summaries = [write_report(d) for d in run_dirs]
    table = comparison_table(summaries) + "\n## Table 2 (test): m2f beside the paper\n\n" + table2(summaries)
    if compare_out is not None:
        Path(compare_out).write_text("# m2f comparison\n\n" + table, encoding="utf-8")
    return table
