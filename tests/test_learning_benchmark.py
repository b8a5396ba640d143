"""benchmarks/learning.py: the learning-evidence benchmark end to end on a few hundred steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import learning  # noqa: E402

TINY = ["--steps", "120", "--prefill", "60", "--pretrain", "2", "--eval-every", "60", "--eval-episodes", "1",
        "--final-episodes", "2", "--random-episodes", "6", "--seeds", "0", "--jobs", "1",
        "--", "--replay.batch", "2", "--replay.length", "4", "--mae.batch", "2", "--mae.length", "4",
        "--run.checkpoint_every", "60"]


def test_benchmark_trains_evaluates_and_reuses_finished_runs(tmp_path, capsys):
    logdir = tmp_path / "bench"
    assert learning.main(["--logdir", str(logdir), *TINY]) == 0
    result = json.loads((logdir / "learning.json").read_text())
    run = result["runs"][0]
    assert len(run["final_returns"]) == 2 and result["agent_episodes"] == 2
    assert result["random_episodes"] == 6
    assert run["evals"] and all(step <= 120 for step, _ in run["evals"])
    # toy_catch returns are counts of catches minus misses over 5 drops
    assert all(-5 <= r <= 5 and float(r).is_integer() for r in run["final_returns"])
    low, high = result["random_ci95"]
    assert low <= result["random_mean"] <= high
    assert result["beats_random"] == (result["agent_ci95"][0] > high)
    assert (logdir / "learning.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "final policy return" in table and "random:" in table

    # a second call finds the finished run: the run is not trained again
    metrics = (Path(run["logdir"]) / "metrics.jsonl").read_text()
    assert learning.main(["--logdir", str(logdir), "--plot", "none", *TINY]) == 0
    assert (Path(run["logdir"]) / "metrics.jsonl").read_text().count("train/return") == metrics.count("train/return")
    again = json.loads((logdir / "learning.json").read_text())
    assert again["runs"][0]["final_returns"] == run["final_returns"]  # same checkpoint, same seeds
    assert again["random_mean"] == result["random_mean"]


def test_a_refused_training_run_is_one_line_and_exit_2(tmp_path, capsys):
    """The child's own one-line error, not its traceback or log tail, and its exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        learning.run_main(["--logdir", str(tmp_path), *TINY, "--no-such.key", "1"])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: seed 0: unknown config key 'no-such.key'"), line


def test_a_crashed_training_run_is_one_line_naming_its_log(tmp_path, capsys, monkeypatch):
    def crash(cmd, **kwargs):
        kwargs["stdout"].write(b"Traceback (most recent call last):\nRuntimeError: boom\n")
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(learning.subprocess, "run", crash)
    with pytest.raises(SystemExit) as exit_info:
        learning.run_main(["--logdir", str(tmp_path), *TINY])
    assert exit_info.value.code == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "exit status 1" in line and "RuntimeError: boom" in line and "train.log" in line
