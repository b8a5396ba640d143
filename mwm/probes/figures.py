"""Figures of the probes: reconstruction grids (as in the MAE paper) and metric plots.

Every file is written atomically (:mod:`mwm.atomic`); plots use matplotlib's Agg
backend, so no display is needed.
"""

from __future__ import annotations

import io
import math
from typing import Dict, List, Mapping, Sequence

import cv2
import numpy as np

from mwm.atomic import atomic_write_bytes
from mwm.probes.stats import MIN_INTERVAL_VALUES

SEPARATOR = 255  # white lines between the tiles of a grid


def image_grid(rows: Mapping[str, np.ndarray], scale: int = 2, gap: int = 2, label_width: int = 0) -> np.ndarray:
    """Tile uint8 image rows {name: (N, H, W, C)} into one (R * H', label_width + N * W', C)
    image, one row per entry in order, each tile enlarged ``scale`` times (nearest), with
    ``gap`` white pixels between tiles and, when ``label_width`` > 0, each row's name
    written in a white column on the left."""
    tiles = [np.repeat(np.repeat(np.asarray(images, np.uint8), scale, axis=1), scale, axis=2)
             for images in rows.values()]  # each (N, H', W', C)
    n, height, width, channels = tiles[0].shape
    grid = np.full((len(tiles) * (height + gap) - gap, label_width + n * (width + gap) - gap, channels), SEPARATOR,
                   np.uint8)
    for r, (name, images) in enumerate(zip(rows, tiles)):
        top = r * (height + gap)
        for c in range(n):
            left = label_width + c * (width + gap)
            grid[top:top + height, left:left + width] = images[c]
        if label_width:
            for line, text in enumerate(_wrap(name, label_width)):
                cv2.putText(grid, text, (4, top + height // 2 - 6 + 16 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                            (0,) * channels, 1, cv2.LINE_AA)
    return grid


def _wrap(text: str, width: int) -> List[str]:
    """Split ``text`` into lines of words that fit ``width`` pixels at the label font (~7 px a character)."""
    lines: List[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width // 7:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def draw_boxes(images: np.ndarray, boxes: np.ndarray, present: np.ndarray, colour=(255, 255, 0)) -> np.ndarray:
    """Copies of uint8 images (N, H, W, C) with a 1-pixel outline just outside each present box."""
    out = np.array(images, np.uint8, copy=True)
    height, width = out.shape[1:3]
    value = np.asarray(colour[: out.shape[-1]] if out.shape[-1] == 3 else [max(colour)], np.uint8)
    for image, box, on in zip(out, boxes, present):
        if not on:
            continue
        top, left = max(int(box[0]) - 1, 0), max(int(box[1]) - 1, 0)
        bottom, right = min(int(box[2]), height - 1), min(int(box[3]), width - 1)
        image[top, left:right + 1] = value
        image[bottom, left:right + 1] = value
        image[top:bottom + 1, left] = value
        image[top:bottom + 1, right] = value
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 (H, W, C) RGB or (H, W, 1) grey image."""
    array = np.asarray(image, np.uint8)
    if array.ndim == 3 and array.shape[-1] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {array.shape} as PNG")
    return encoded.tobytes()


def save_png(path: str, image: np.ndarray) -> None:
    """Write ``image`` (H, W, C) uint8 to ``path`` as PNG, atomically."""
    atomic_write_bytes(path, png_bytes(image))


def _save_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error(row: Mapping[str, float], metric: str) -> List[float]:
    """Distances from the mean to the interval bounds (0 where there is no interval)."""
    mean, low, high = (row.get(f"{metric}_{k}", math.nan) for k in ("mean", "ci_low", "ci_high"))
    if any(math.isnan(v) for v in (mean, low, high)):
        return [0.0, 0.0]
    return [mean - low, high - mean]


# metric -> (readable name, which way is better), for axis titles
METRIC_LABELS = {
    "frame_mse": ("frame MSE", "lower is better"),
    "box_mse": ("object-box MSE", "lower is better"),
    "visible": ("object visible (share of frames)", "higher is better"),
    "inpaint_visible": ("object visible, masked input", "higher is better"),
    "object_r2": ("object position R²", "higher is better"),
    "probe_r2": ("all positions R²", "higher is better"),
    "probe_f1": ("categorical F1", "higher is better"),
}
PANELS_PER_ROW = 3
FLOOR_METHOD = "random"  # the untrained encoder: the floor every method should beat


def metric_title(metric: str) -> str:
    """'object position R²\n(higher is better)' for a known metric, the name otherwise."""
    name, better = METRIC_LABELS.get(metric, (metric.replace("_", " "), ""))
    return f"{name}\n({better})" if better else name


def bars_figure(summary: Sequence[Mapping], metrics: Sequence[str], label_key: str, title: str):
    """The figure of :func:`plot_bars` (returned, not saved, so tests can measure its layout)."""
    plt = _pyplot()
    cols = min(len(metrics), PANELS_PER_ROW)
    rows_n = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.4 * rows_n + 0.4), squeeze=False,
                             layout="constrained")
    labels = [str(row[label_key]).replace(" ", "\n", 1) for row in summary]
    xs = np.arange(len(summary))
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        means = np.array([row.get(f"{metric}_mean", math.nan) for row in summary], np.float64)
        errors = np.array([_error(row, metric) for row in summary]).T.reshape(2, -1)
        ax.bar(xs, np.nan_to_num(means), yerr=errors, capsize=3, color="tab:blue", alpha=0.85)
        for x, row in zip(xs, summary):  # too few seeds for an interval: the values themselves
            values = row.get(f"{metric}_values")
            if isinstance(values, (list, tuple)) and 0 < len(values) < MIN_INTERVAL_VALUES:
                ax.plot([x] * len(values), values, "o", color="black", markersize=3)
                ax.annotate(f"n={len(values)}", (x, max(values)), textcoords="offset points", xytext=(0, 3),
                            ha="center", fontsize=7)
        floor = [m for m, row in zip(means, summary) if row.get("method") == FLOOR_METHOD and np.isfinite(m)]
        if floor:
            ax.axhline(floor[0], color="tab:red", linestyle="--", linewidth=1, label="random encoder (floor)")
            ax.legend(fontsize=7, loc="best")
        finite = means[np.isfinite(means)]
        if finite.size and finite.min() >= 0:
            top = 1.05 if finite.max() <= 1 and "mse" not in metric else None
            ax.set_ylim(bottom=0, top=top)
        # Horizontal labels where they fit under their bar (under 6 px a character at 7 pt;
        # the axes take about 3/4 of the panel's width), else vertical ones, whose boxes
        # cannot run into each other.
        longest = max((len(line) for label in labels for line in label.split("\n")), default=0)
        fits = longest * 6 <= 0.75 * 3.6 * fig.dpi / max(len(labels), 1)
        ax.set_xticks(xs, labels, fontsize=7, rotation=0 if fits else 90)
        ax.set_title(metric_title(metric), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_bars(summary: Sequence[Mapping], metrics: Sequence[str], label_key: str, path: str, title: str) -> None:
    """Panels of at most three metrics per row: a bar per summary row (labelled by
    ``label_key``) with its confidence interval, or its per-seed values where there are
    too few seeds for one; the untrained (random) encoder drawn as a dashed floor."""
    _save_figure(bars_figure(summary, metrics, label_key, title), path)


def plot_grouped(summary: Sequence[Mapping], metric: str, group_key: str, bar_key: str, path: str,
                 title: str) -> None:
    """Grouped bars: one group per ``group_key`` value (in order of appearance), one
    coloured bar per ``bar_key`` value inside it, with confidence intervals."""
    plt = _pyplot()
    groups = list(dict.fromkeys(str(r[group_key]) for r in summary))
    bars = list(dict.fromkeys(str(r[bar_key]) for r in summary))
    width = 0.8 / max(len(bars), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups)), 3.8))
    for b, name in enumerate(bars):
        rows = {str(r[group_key]): r for r in summary if str(r[bar_key]) == name}
        xs = [g + (b - (len(bars) - 1) / 2) * width for g, group in enumerate(groups) if group in rows]
        chosen = [rows[group] for group in groups if group in rows]
        means = [r.get(f"{metric}_mean", math.nan) for r in chosen]
        errors = np.array([_error(r, metric) for r in chosen]).T.reshape(2, -1)
        ax.bar(xs, np.nan_to_num(means), width, yerr=errors, capsize=2, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=min(len(bars), 4))
    _save_figure(fig, path)


def plot_lines(summary: Sequence[Mapping], metric: str, x_key: str, group_key: str, path: str, title: str,
               log_x: bool = False) -> None:
    """``metric`` against ``x_key``, one line (with its interval band) per ``group_key``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    groups: Dict[str, List[Mapping]] = {}
    for row in summary:
        groups.setdefault(str(row[group_key]), []).append(row)
    for name, rows in sorted(groups.items()):
        rows = sorted((r for r in rows if not math.isnan(float(r[x_key]))), key=lambda r: float(r[x_key]))
        if not rows:
            continue
        xs = [float(r[x_key]) for r in rows]
        means = np.array([r.get(f"{metric}_mean", math.nan) for r in rows], np.float64)
        if not np.isfinite(means).any():
            continue  # e.g. reconstruction metrics of a method without a decoder
        lows = np.array([r.get(f"{metric}_ci_low", math.nan) for r in rows], np.float64)
        highs = np.array([r.get(f"{metric}_ci_high", math.nan) for r in rows], np.float64)
        line, = ax.plot(xs, means, marker="o", label=name)
        if np.isfinite(lows).any():
            ax.fill_between(xs, lows, highs, alpha=0.2, color=line.get_color())
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x_key.replace("_", " "))
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save_figure(fig, path)
