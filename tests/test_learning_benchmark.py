"""benchmarks/learning.py: statistics over seeds, and the benchmark end to end on a few hundred steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import learning  # noqa: E402

TINY = ["--steps", "120", "--prefill", "60", "--eval-every", "60", "--eval-episodes", "1",
        "--final-episodes", "2", "--random-episodes", "2", "--diagnostic-sequences", "8", "--jobs", "2",
        "--", "--replay.batch", "2", "--replay.length", "4", "--mae.batch", "2", "--mae.length", "4",
        "--run.pretrain", "2", "--run.train_every", "20", "--run.checkpoint_every", "60"]


def _runs(agent, finals):
    return [{"agent": agent, "seed": seed, "final_mean": value, "agent_steps_per_s": 10.0, "minutes": 1.0,
             "evals": [], "world_model": {"reward_corr": 0.5}} for seed, value in enumerate(finals)]


def test_intervals_come_from_seed_means_and_need_three_seeds():
    args = learning.parse_args(["--agents", "mwm", "curl"])
    # mwm: three seeds far apart; the interval spans them (pooled episodes would not)
    result = learning.summarise(args, _runs("mwm", [0.0, 1.0, 5.0]) + _runs("curl", [2.0, 2.2]), [-1.0, -0.6, -0.8])
    mwm, curl, random = result["agents"]["mwm"], result["agents"]["curl"], result["random"]
    assert mwm["mean"] == pytest.approx(2.0) and mwm["n"] == 3
    low, high = mwm["ci95"]
    assert 0.0 <= low < 2.0 < high <= 5.0
    assert curl["ci95"] is None and curl["n"] == 2  # two seeds: values, never an interval
    assert random["ci95"] is not None and random["ci95"][1] <= -0.6
    assert mwm["beats_random"] and not curl["beats_random"]  # no interval, no claim
    lines = learning.comparisons(result)
    assert "curl: fewer than 3 seeds, no interval; compared by values only" in lines
    assert "curl scores higher than mwm (+2.10 vs +2.00); the intervals overlap" in lines


def test_a_saved_result_rebuilds_its_table_without_training(tmp_path, capsys):
    args = learning.parse_args(["--agents", "mwm", "curl"])
    result = learning.summarise(args, _runs("mwm", [0.0, 1.0, 5.0]) + _runs("curl", [2.0, 2.2]), [-1.0, -0.6, -0.8])
    saved = tmp_path / "result.json"
    saved.write_text(json.dumps(result))
    assert learning.main(["--show", str(saved), "--logdir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "| mwm | **+2.00** [" in out and "| +0.00, +1.00, +5.00 |" in out
    assert "| curl | +2.10 (n=2, no interval) |" in out
    assert not (tmp_path / "none").exists()  # nothing trained, nothing written


def test_a_one_setting_merge_is_shown_and_drawn_like_a_result(tmp_path, capsys):
    """learning_sweep.py saves seeds or agents of separate commands merged at one setting as a
    sweep of one result; --show prints it as a learning result, and draws it where --plot says."""
    args = learning.parse_args(["--agents", "mwm", "curl"])
    runs = _runs("mwm", [4.0, 4.5, 5.0]) + _runs("curl", [2.0, 2.2, 3.0])
    for run in runs:
        run["evals"] = [[1000, -1.0], [2000, run["final_mean"]]]
    saved = tmp_path / "merged.json"
    saved.write_text(json.dumps({"settings": ["16 px"], "results": [learning.summarise(args, runs, [-1.0, -0.6, -0.8])]}))
    assert learning.main(["--show", str(saved)]) == 0
    assert "| mwm | **+4.50** [" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [saved]  # no --plot: nothing drawn
    figure = tmp_path / "merged.png"
    assert learning.main(["--show", str(saved), "--plot", str(figure)]) == 0
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_overrides_replace_a_settings_flags_instead_of_repeating_them():
    args = learning.parse_args(["--", "--replay.batch", "2", "--ac.entropy", "1e-4"])
    cmd = learning.train_command(args, "mwm", 0, Path("x"))
    assert cmd.count("--replay.batch") == 1 and cmd[cmd.index("--replay.batch") + 1] == "2"
    assert cmd[cmd.index("--ac.entropy") + 1] == "1e-4"
    assert cmd[cmd.index("--preset") + 1] == "tiny"
    curl = learning.train_command(args, "curl", 0, Path("x"))
    assert curl[curl.index("--preset") + 1] == "small"  # each agent at its own CPU size
    with pytest.raises(SystemExit, match="pairs"):
        learning.merge_flags(["--a", "1", "--b"])


def test_every_agent_starts_from_the_envs_prefill_whatever_its_size_preset():
    """The tiny preset shortens prefill to 100 steps and the small one keeps the env's 1000: the
    benchmark passes one prefill to every agent, so that they all start from the same data."""
    from mwm import config

    assert config.build("toy_catch", "mwm", "tiny").run.prefill == 100  # what a run got without the flag
    for argv, want in (([], "1000"), (["--prefill", "300"], "300")):
        args = learning.parse_args(argv)
        for agent in ("mwm", "dreamerv2", "curl"):
            cmd = learning.train_command(args, agent, 0, Path("x"))
            assert cmd.count("--run.prefill") == 1 and cmd[cmd.index("--run.prefill") + 1] == want, (agent, argv)


def test_agents_that_started_from_different_prefills_are_flagged_in_the_comparison():
    args = learning.parse_args(["--agents", "mwm", "curl"])
    runs = [dict(run, prefill=100) for run in _runs("mwm", [0.0, 1.0, 5.0])] + \
        [dict(run, prefill=1000) for run in _runs("curl", [2.0, 2.2, 1.0])]
    result = learning.summarise(args, runs, [-1.0, -0.6, -0.8])
    assert result["agents"]["mwm"]["prefill"] == 100 and result["agents"]["curl"]["prefill"] == 1000
    assert learning.comparisons(result)[0] == ("warning: the agents did not start from the same random-policy "
                                               "prefill (mwm 100, curl 1000): not one protocol")
    same = learning.summarise(args, [dict(run, prefill=1000) for run in runs], [-1.0, -0.6, -0.8])
    assert not any(line.startswith("warning") for line in learning.comparisons(same))


def test_benchmark_trains_compares_diagnoses_and_reuses_finished_runs(tmp_path, capsys):
    logdir = tmp_path / "bench"
    flags = ["--logdir", str(logdir), "--agents", "mwm", "dreamerv2", "--seeds", "0", *TINY]
    assert learning.main(flags) == 0
    result = json.loads((logdir / "learning.json").read_text())
    assert set(result["agents"]) == {"mwm", "dreamerv2"}
    for run in result["runs"]:
        assert len(run["final_returns"]) == 2
        # toy_catch returns are counts of catches minus misses over 5 drops
        assert all(-5 <= r <= 5 and float(r).is_integer() for r in run["final_returns"])
        assert run["evals"] and all(step <= 120 for step, _ in run["evals"])
        assert len(run["world_model"]["recon_error_by_step"]) == 15
        assert Path(run["logdir"]).name == f"toy_catch-o16-{run['agent']}-seed0"
        assert run["prefill"] == 60  # read back from the run's config
        shared = dict(zip(run["flags"][::2], run["flags"][1::2]))  # what every seed of the agent shares
        assert shared["--agent"] == run["agent"] and shared["--run.prefill"] == "60"
        assert "--seed" not in shared and "--logdir" not in shared
    assert result["agents"]["mwm"]["ci95"] is None  # one seed
    assert result["agents"]["mwm"]["prefill"] == result["agents"]["dreamerv2"]["prefill"] == 60
    assert result["agents"]["mwm"]["flags"] == next(r["flags"] for r in result["runs"] if r["agent"] == "mwm")
    assert (logdir / "learning.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "final return" in table and "random" in table and "fewer than 3 seeds" in table

    # a second call finds the finished runs: nothing is trained again, the figures repeat
    run = result["runs"][0]
    metrics = (Path(run["logdir"]) / "metrics.jsonl").read_text()
    assert learning.main([*flags[:-len(TINY)], "--plot", "none", *TINY]) == 0
    assert (Path(run["logdir"]) / "metrics.jsonl").read_text().count("train/return") == metrics.count("train/return")
    again = json.loads((logdir / "learning.json").read_text())
    assert again["runs"][0]["final_returns"] == run["final_returns"]  # same checkpoint, same seeds
    assert again["random"]["seed_means"] == result["random"]["seed_means"]

    # the world-model benchmark on the same runs: one row per run, the 15 open-loop steps
    from benchmarks import world_model

    out, png = tmp_path / "wm.json", tmp_path / "wm.png"
    runs = [r["logdir"] for r in result["runs"]]
    assert world_model.main([*runs, "--episodes", "1", "--sequences", "4", "--out", str(out), "--plot", str(png)]) == 0
    rows = json.loads(out.read_text())
    assert [row["agent"] for row in rows] == [r["agent"] for r in result["runs"]]
    assert all(len(row["recon_error_by_step"]) == 15 and row["sequences"] == 4 for row in rows)
    assert png.stat().st_size > 0


def test_a_refused_training_run_is_one_line_and_exit_2(tmp_path, capsys):
    """The child's own one-line error, not its traceback or log tail, and its exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        learning.run_main(["--logdir", str(tmp_path), "--agents", "mwm", "--seeds", "0", *TINY, "--no-such.key", "1"])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: mwm seed 0: unknown config key 'no-such.key'"), line


def _error_of_one_fake_run(fake_run, tmp_path, capsys, monkeypatch):
    """The benchmark on one mwm seed whose mwm.train is ``fake_run``: its exit status and its
    only line on stderr."""
    monkeypatch.setattr(learning.subprocess, "run", fake_run)
    with pytest.raises(SystemExit) as exit_info:
        learning.run_main(["--logdir", str(tmp_path), "--agents", "mwm", "--seeds", "0", *TINY])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exit_info.value.code, line


def test_a_crashed_training_run_is_one_line_naming_its_log(tmp_path, capsys, monkeypatch):
    def crash(cmd, **kwargs):
        kwargs["stdout"].write(b"Traceback (most recent call last):\nRuntimeError: boom\n")
        return subprocess.CompletedProcess(cmd, 1)

    code, line = _error_of_one_fake_run(crash, tmp_path, capsys, monkeypatch)
    assert code == 1
    assert "exit status 1" in line and "RuntimeError: boom" in line and "train.log" in line


def test_a_run_stopped_before_its_last_step_is_not_scored_as_final(tmp_path, capsys, monkeypatch):
    """mwm.train exits 0 when a signal stops it; the benchmark must not play that policy as the
    final one, but say where the run stopped and that the same command resumes it."""
    def stopped(cmd, **kwargs):
        logdir = Path(cmd[cmd.index("--logdir") + 1])
        logdir.mkdir(parents=True, exist_ok=True)
        (logdir / "metrics.jsonl").write_text(json.dumps({"step": 60, "eval/return": -1.0}) + "\n")
        kwargs["stdout"].write(b"done: 60 agent steps | stopped by SIGINT\n")
        return subprocess.CompletedProcess(cmd, 0)

    code, line = _error_of_one_fake_run(stopped, tmp_path, capsys, monkeypatch)
    assert code == 2
    assert "stopped at step 60 of 120" in line and "run the same command again" in line, line


def test_a_runs_minutes_are_its_training_sessions_not_the_call_that_reopened_it(tmp_path):
    log = tmp_path / "run.train.log"
    log.write_text("$ python -m mwm.train ...\n[####] 8000/8000\n"
                   "done: 4000 agent steps (4000 frames), 40 episodes, 3000 updates in 0:10:30 | return -1.00\n"
                   "$ python -m mwm.train ...\nresuming from checkpoint-4000.pt at step 4000\n"
                   "done: 8000 agent steps (8000 frames), 80 episodes, 7000 updates in 1:05:00 | return +1.00\n"
                   "$ python -m mwm.train ...\n"
                   "done: 8000 agent steps (8000 frames), 80 episodes, 7000 updates in 0:00:00 | no episode finished\n")
    assert learning.training_minutes(log) == pytest.approx(10.5 + 65.0)
    assert learning.training_minutes(tmp_path / "missing.log") is None


@pytest.mark.parametrize("content, says", [
    (None, "cannot read the learning result"),
    ("{", "cannot read the learning result"),
    ('{"settings": ["16 px", "8 px"], "results": [{}, {}]}', "is a sweep of several settings: show it with python benchmarks/learning_sweep.py"),
    ('{"env": "toy_catch"}', "is not a result of benchmarks/learning.py"),
    ('{"settings": [], "results": []}', "holds no learning result"),
])
def test_showing_a_file_that_is_not_a_saved_result_is_one_line_and_exit_2(tmp_path, capsys, content, says):
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        learning.run_main(["--show", str(path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err
