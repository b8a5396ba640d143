"""Result tables of the probes: one row per seed in, CSV and Markdown out.

Per-seed rows are dicts of plain values. :func:`aggregate` groups them by the keys
that define an experiment (env, method, masking, object size) and replaces every
metric by ``<metric>_mean``, ``_ci_low``, ``_ci_high``, ``_iqm``, ``_n`` and ``_values``
(the per-seed values, shown where there are too few for an interval) over the seeds.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Dict, List, Mapping, Sequence

from mwm.atomic import atomic_write_text
from mwm.probes.stats import summarise

GROUP_KEYS = ("dataset", "env", "method", "mask_type", "mask_ratio", "default_ratio", "object_size", "object_name",
              "large")
HEADLINE = (  # (metric, column title) of the Markdown table
    ("frame_mse", "frame MSE"),
    ("box_mse", "box MSE"),
    ("visible", "visible"),
    ("inpaint_visible", "visible (masked)"),
    ("object_r2", "object R2"),
    ("probe_r2", "all positions R2"),
    ("probe_f1", "categorical F1"),
)


def metric_names(rows: Sequence[Mapping]) -> List[str]:
    """Numeric columns of the rows that are neither group keys nor the seed, in first-seen order."""
    names: Dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in GROUP_KEYS and key != "seed" and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                names.setdefault(key, None)
    return list(names)


def aggregate(rows: Sequence[Mapping], confidence: float) -> List[Dict]:
    """One summary row per group of per-seed rows, with ``seeds`` and, per metric, its
    mean, bootstrap interval and interquartile mean."""
    groups: Dict[tuple, List[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(_group_value(row.get(k)) for k in GROUP_KEYS), []).append(row)
    metrics = metric_names(rows)
    out = []
    for members in groups.values():
        summary: Dict = {k: members[0].get(k) for k in GROUP_KEYS}
        summary["seeds"] = len(members)
        for metric in metrics:
            stats = summarise([float(m.get(metric, math.nan)) for m in members], confidence)
            for stat in ("mean", "ci_low", "ci_high", "iqm", "n"):
                summary[f"{metric}_{stat}"] = stats[stat]
            summary[f"{metric}_values"] = [v for v in (float(m.get(metric, math.nan)) for m in members)
                                           if math.isfinite(v)]
        out.append(summary)
    return out


def _group_value(value):
    """NaN (e.g. no mask ratio) compares unequal to itself; group it as None."""
    return None if isinstance(value, float) and math.isnan(value) else value


def csv_text(rows: Sequence[Mapping]) -> str:
    """CSV with the union of the rows' keys as columns (first-seen order); NaN left empty."""
    columns: Dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return buffer.getvalue()


def _csv_value(value):
    if isinstance(value, (list, tuple)):  # per-seed values: "0.1; 0.2"
        return "; ".join(f"{v:.6g}" for v in value)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def write_csv(path: str, rows: Sequence[Mapping]) -> None:
    atomic_write_text(path, csv_text(rows))


def read_csv(path: str) -> List[Dict]:
    """Rows written by :func:`write_csv`, values typed back: empty -> NaN, True/False ->
    bool, numbers -> int or float, the rest strings."""
    with open(path, newline="") as f:
        return [{key: _typed(value) for key, value in row.items()} for row in csv.DictReader(f)]


def _typed(text: str):
    if text == "":
        return math.nan
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def format_cell(row: Mapping, metric: str) -> str:
    """``mean [low, high]`` with three significant digits; from fewer seeds than an interval
    needs, ``mean (n=2: a, b)`` with the values themselves; ``-`` when undefined."""
    mean = row.get(f"{metric}_mean", math.nan)
    if mean is None or math.isnan(mean):
        return "-"
    low, high = row.get(f"{metric}_ci_low", math.nan), row.get(f"{metric}_ci_high", math.nan)
    if math.isnan(low) or math.isnan(high):
        values = row.get(f"{metric}_values")
        if isinstance(values, (list, tuple)) and values:
            return f"{mean:.3g} (n={len(values)}: {', '.join(f'{v:.3g}' for v in values)})"
        return f"{mean:.3g}"
    return f"{mean:.3g} [{low:.3g}, {high:.3g}]"


def markdown_table(summary: Sequence[Mapping], metrics: Sequence[tuple] = HEADLINE) -> str:
    """The summary rows as a Markdown table: env, method, masking, object size, seeds,
    then one ``mean [CI]`` cell per headline metric."""
    head = ["env", "method", "masking", "object px", "seeds"] + [title for _, title in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        size = row.get("object_size", math.nan)
        kind = row.get("mask_type")
        masking = f"{kind} {row['mask_ratio']:g}" if isinstance(kind, str) and kind else "-"
        cells = [str(row["env"]), str(row["method"]), masking,
                 "-" if size is None or math.isnan(size) else f"{size:.2g}", str(row["seeds"])]
        cells += [format_cell(row, metric) for metric, _ in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: str, summary: Sequence[Mapping], title: str, notes: str = "") -> None:
    text = f"# {title}\n\n" + markdown_table(summary) + (f"\n{notes}\n" if notes else "")
    atomic_write_text(path, text)
