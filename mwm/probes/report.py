"""The probe's outputs on disk: per-seed CSV, summary CSV and Markdown, metric plots.

``write_probe_report`` serves ``python -m mwm.probe`` (one env, one method);
``write_benchmark_report`` serves ``benchmarks/small_objects.py`` (many of both), adding
the plots against object size and mask ratio.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from mwm.probes.figures import plot_bars, plot_grouped, plot_lines
from mwm.probes.methods import METHODS
from mwm.probes.tables import HEADLINE, aggregate, markdown_table, write_csv, write_markdown

PLOTTED = ("frame_mse", "box_mse", "visible", "object_r2", "probe_r2")
NOTES = """Columns: mean over seeds [bootstrap 95% interval]. frame/box MSE: reconstruction with no
token removed, pixels in [0, 1]; visible: fraction of held-out frames whose object is
still visible in that reconstruction; visible (masked): the same at the training mask
ratio; object R2: linear probe of the object's coordinates from frozen features;
all positions R2 / categorical F1: every annotated variable (docs/PROBES.md)."""


def write_probe_report(logdir: Path, rows: Sequence[Mapping], confidence: float, title: str) -> str:
    """results.csv, summary.csv, summary.md and figures/metrics.png; returns the Markdown table."""
    summary = aggregate(rows, confidence)
    write_csv(str(logdir / "results.csv"), rows)
    write_csv(str(logdir / "summary.csv"), summary)
    write_markdown(str(logdir / "summary.md"), summary, title, NOTES)
    one_env = len({row["env"] for row in summary}) == 1  # then the title names it
    for row in summary:
        row["label"] = row["method"] if one_env else f"{row['method']} {row['env']}"
    plot_bars(summary, _available(summary, PLOTTED), "label", str(logdir / "figures" / "metrics.png"), title)
    return markdown_table(summary)


def write_benchmark_report(logdir: Path, rows: Sequence[Mapping], confidence: float, title: str,
                           notes: str = "") -> List[Dict]:
    """The benchmark's tables and figures; returns the summary rows.

    figures/<metric>-vs-size.png: toy_catch's object size sweep, one line per method
    at its default mask ratio. figures/<metric>-vs-ratio.png: the mask-ratio sweep,
    one line per (data set, method) run at several ratios. figures/<metric>-by-env.png:
    grouped bars of every data set and method at the default ratios.
    """
    summary = sorted(aggregate(rows, confidence), key=experiment_order)
    write_csv(str(logdir / "results.csv"), rows)
    write_csv(str(logdir / "summary.csv"), summary)
    write_markdown(str(logdir / "summary.md"), summary, title, NOTES + ("\n\n" + notes if notes else ""))
    figures = logdir / "figures"
    sizes = [r for r in summary if r["env"] == "toy_catch" and r.get("default_ratio") is not False]
    for metric in _available(summary, PLOTTED):
        if len({r["object_size"] for r in sizes}) > 1:
            plot_lines(sizes, metric, "object_size", "method", str(figures / f"{metric}-vs-size.png"),
                       f"toy_catch: {metric} against object size", log_x=True)
        ratios = swept(summary)
        if ratios:
            plot_lines(ratios, metric, "mask_ratio", "line", str(figures / f"{metric}-vs-ratio.png"),
                       f"{metric} against mask ratio")
        defaults = [dict(r, data=r.get("dataset") or r["env"]) for r in summary if r.get("default_ratio") is not False]
        plot_grouped(defaults, metric, "data", "method", str(figures / f"{metric}-by-env.png"),
                     f"{metric} by data set and method")
    return summary


def experiment_order(row: Mapping) -> tuple:
    """Sort key of summary rows: Atari games, then toy_catch by object size; methods in
    :data:`mwm.probes.methods.METHODS` order; then mask ratio."""
    size = row.get("object_size")
    ratio = row.get("mask_ratio")
    return (row["env"].startswith("toy"), row["env"], -1.0 if _isnan(size) or size is None else float(size),
            METHODS.index(row["method"]) if row["method"] in METHODS else len(METHODS),
            -1.0 if _isnan(ratio) or ratio is None else float(ratio))


def swept(summary: Sequence[Mapping]) -> List[Dict]:
    """The summary rows of every (data set, method) run at two or more mask ratios, each
    with a ``line`` label for the ratio plots."""
    lines: Dict[str, List[Dict]] = {}
    for row in summary:
        if not _isnan(row["mask_ratio"]):
            label = f"{row['method']} {row.get('dataset') or row['env']}"
            lines.setdefault(label, []).append(dict(row, line=label))
    return [row for rows in lines.values() if len({r["mask_ratio"] for r in rows}) > 1 for row in rows]


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _available(summary: Sequence[Mapping], metrics: Sequence[str]) -> List[str]:
    """The metrics with at least one finite mean."""
    return [m for m in metrics if any(not _isnan(r.get(f"{m}_mean", math.nan)) for r in summary)]


__all__ = ["write_probe_report", "write_benchmark_report", "HEADLINE"]
