"""benchmarks/small_objects.py: its plan of runs, and a smoke run that writes the report."""

import csv
import importlib.util
from pathlib import Path

import pytest

from mwm.probes import suite

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("small_objects", ROOT / "benchmarks" / "small_objects.py")
small_objects = importlib.util.module_from_spec(spec)
spec.loader.exec_module(small_objects)


def test_cpu_plan_sweeps_sizes_games_methods_and_ratios():
    setting = small_objects.SETTINGS["cpu"]
    names = [d.name for d in suite.datasets(setting)]
    assert names == ["toy_catch-s1", "toy_catch-s2", "toy_catch-s4", "toy_catch-s8", "toy_catch-s16",
                     "atari_pong", "atari_breakout", "atari_boxing"]
    by_name = {d.name: d for d in suite.datasets(setting)}
    assert by_name["toy_catch-s16"].overrides == ("env.object_size=16",)
    swept = suite.runs_of(by_name["toy_catch-s4"], setting)
    assert {m for m, _ in swept} == set(suite.METHODS)
    assert sorted(r for m, r in swept if r is not None) == [0.5, 0.75, 0.9, 0.95]
    assert all(r is None for _, r in suite.runs_of(by_name["atari_pong"], setting))
    assert suite.ratio_overrides("siammae", 0.9) == ["siammae.mask_ratio=0.9"]
    assert suite.ratio_overrides("mae", 0.5) == ["mae.mask_ratio=0.5"]
    gpu = small_objects.SETTINGS["gpu"]
    assert gpu.preset == "default" and len(suite.runs_of(suite.datasets(gpu)[0], gpu)) == 7 + 16


def test_smoke_run_writes_one_report(tmp_path):
    logdir = tmp_path / "bench"
    code = small_objects.main([
        "--logdir", str(logdir), "--workers", "0", "--sizes", "4", "8", "--games", "--methods", "mwm",
        "--ratios", "0.5", "--probe.updates", "2", "--probe.seeds", "1", "--probe.train_episodes", "2",
        "--probe.eval_episodes", "1", "--probe.episode_steps", "25", "--probe.eval_frames", "16",
        "--probe.probe_frames", "32", "--probe.figure_frames", "2", "--mae.batch", "2", "--mae.length", "4"])
    assert code == 0
    with open(logdir / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    seen = {(r["dataset"], r["method"], r["mask_ratio"], r["default_ratio"]) for r in summary}
    assert seen == {("toy_catch-s4", "mwm", "0.75", "True"), ("toy_catch-s4", "mwm", "0.5", "False"),
                    ("toy_catch-s8", "mwm", "0.75", "True")}  # the CPU sweep runs on toy_catch-s4 only
    assert [float(r["object_size"]) for r in summary] == [4.0, 4.0, 8.0]  # sorted by size, then ratio
    assert (logdir / "figures" / "frame_mse-vs-ratio.png").exists()
    assert (logdir / "figures" / "frame_mse-vs-size.png").exists()
    assert (logdir / "figures" / "object_r2-by-env.png").exists()
    assert "| toy_catch | mwm | random 0.75 | 8 | 1 |" in (logdir / "summary.md").read_text()
    assert list((logdir / "toy_catch-s8" / "mwm" / "figures").glob("reconstructions-*.png"))
    # The report can be rebuilt from results.csv alone (e.g. after an interrupted run).
    (logdir / "summary.csv").unlink()
    assert small_objects.main(["--logdir", str(logdir), "--report-only"]) == 0
    with open(logdir / "summary.csv") as f:
        rebuilt = list(csv.DictReader(f))
    assert [(r["dataset"], r["method"], r["frame_mse_mean"]) for r in rebuilt] == \
        [(r["dataset"], r["method"], r["frame_mse_mean"]) for r in summary]
