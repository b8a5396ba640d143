"""The probe's metric figure and tables: readable layout, honest statistics."""

import itertools
import math

import numpy as np
import pytest

from mwm.probes.figures import FLOOR_METHOD, bars_figure, metric_title, plot_bars
from mwm.probes.tables import aggregate, format_cell

METRICS = ("frame_mse", "box_mse", "visible", "object_r2", "probe_r2")
METHODS = ("mwm", "mae", "simmim", "siammae", "dreamerv2", "curl", "random")


def per_seed_rows(seeds: int, methods=METHODS):
    rng = np.random.default_rng(0)
    rows = []
    for method, seed in itertools.product(methods, range(seeds)):
        row = {"env": "atari_pong", "method": method, "seed": seed}
        for metric in METRICS:
            row[metric] = float(rng.uniform(0.0, 1.0))
        rows.append(row)
    return rows


def summary_rows(seeds: int, methods=METHODS):
    summary = aggregate(per_seed_rows(seeds, methods), 0.95)
    for row in summary:
        row["label"] = f"{row['method']} {row['env']}"
    return summary


def _texts(fig):
    """Every visible title, tick label and annotation of the figure, with its pixel box."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, *ax.get_xticklabels(), *ax.get_yticklabels(), *ax.texts]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]


def test_no_title_or_tick_label_overlaps_another():
    fig = bars_figure(summary_rows(3), METRICS, "label", "probe: atari_pong, every method")
    texts = _texts(fig)
    assert len(texts) > 40
    overlaps = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(texts, 2) if box_a.overlaps(box_b)]
    assert not overlaps, overlaps[:5]


def test_titles_say_which_way_is_better_and_the_random_floor_is_drawn():
    summary = summary_rows(3)
    fig = bars_figure(summary, METRICS, "label", "t")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(METRICS)
    assert "lower is better" in panels[0].get_title() and "higher is better" in panels[3].get_title()
    floor = next(r for r in summary if r["method"] == FLOOR_METHOD)
    for ax, metric in zip(panels, METRICS):
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(floor[f"{metric}_mean"])
    assert "R²" in metric_title("object_r2")


def test_two_seeds_show_their_values_and_no_interval():
    summary = summary_rows(2, methods=("mwm", "random"))
    assert all(math.isnan(r["frame_mse_ci_low"]) for r in summary)
    cell = format_cell(summary[0], "frame_mse")
    values = summary[0]["frame_mse_values"]
    assert cell.startswith(f"{summary[0]['frame_mse_mean']:.3g} (n=2: ") and f"{values[1]:.3g}" in cell
    fig = bars_figure(summary, METRICS, "label", "t")
    ax = fig.axes[0]
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert sorted(y for line in dots for y in line.get_ydata()) == pytest.approx(
        sorted(v for r in summary for v in r["frame_mse_values"]))
    assert [t.get_text() for t in ax.texts] == ["n=2", "n=2"]
    bars = ax.containers[0]
    assert bars.has_yerr and all(np.allclose(seg[:, 1], seg[0, 1]) for seg in bars.lines[2][0].get_segments())


def test_three_seeds_give_an_interval_in_the_table(tmp_path):
    summary = summary_rows(3, methods=("mwm",))
    cell = format_cell(summary[0], "visible")
    assert "[" in cell and "n=" not in cell
    plot_bars(summary, METRICS, "label", str(tmp_path / "metrics.png"), "t")
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
