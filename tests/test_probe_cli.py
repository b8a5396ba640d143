"""``python -m mwm.probe`` end to end on toy_catch with tiny sizes, and its error paths."""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest

from mwm.errors import UserError
from mwm.probe import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FAST = ["--preset", "tiny", "--probe.updates", "3", "--probe.train_episodes", "2", "--probe.eval_episodes", "1",
        "--probe.episode_steps", "30", "--probe.eval_frames", "24", "--probe.probe_frames", "48",
        "--probe.figure_frames", "2", "--mae.batch", "2", "--mae.length", "4", "--probe.probe_l2", "[1.0,100.0]"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_probe_runs_end_to_end_and_writes_the_report(tmp_path, capsys):
    logdir = tmp_path / "p"
    assert main(["--env", "toy_catch", "--logdir", str(logdir), "--seed", "3", "--env.object_size", "6", *FAST]) == 0
    rows = read_csv(logdir / "results.csv")
    assert [r["seed"] for r in rows] == ["3", "4"]  # tiny preset: 2 seeds
    for row in rows:
        assert row["method"] == "mwm" and row["env"] == "toy_catch"
        assert float(row["object_size"]) == 6.0  # the override reaches the env and the labels
        assert 0.0 <= float(row["frame_mse"]) <= 1.0 and 0.0 <= float(row["visible"]) <= 1.0
        assert float(row["mask_ratio"]) == 0.75 and row["mask_type"] == "random"
        assert {"r2/object_row", "r2/object_col", "r2/paddle_col", "object_r2"} <= set(row)
    summary = read_csv(logdir / "summary.csv")
    assert len(summary) == 1 and summary[0]["seeds"] == "2"
    mean = float(summary[0]["frame_mse_mean"])
    assert math.isclose(mean, np.mean([float(r["frame_mse"]) for r in rows]), rel_tol=1e-4)
    table = (logdir / "summary.md").read_text()
    assert "| toy_catch | mwm | random 0.75 | 6 | 2 |" in table
    out = capsys.readouterr().out
    assert table.splitlines()[2] in out  # the table is printed too
    assert "(n=2: " in table  # two seeds: their values, no interval
    for seed in (3, 4):  # each seed's progress is named and counts updates
        assert f"seed {seed}: training mwm for 3 updates" in out
    assert "3/3 100%" in out and ("updates/s" in out or "s/update" in out)
    for name in ("reconstructions-seed3.png", "reconstructions-seed4.png", "metrics.png"):
        assert (logdir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((logdir / "seed3").glob("events.out.tfevents.*"))
    assert (logdir / "config.yaml").exists()


def test_curl_is_probed_without_reconstructions(tmp_path):
    logdir = tmp_path / "c"
    main(["--env", "toy_catch", "--method", "curl", "--logdir", str(logdir), "--probe.seeds", "1", "--curl.batch", "8",
          *FAST])
    row = read_csv(logdir / "results.csv")[0]
    assert row["frame_mse"] == "" and row["visible"] == ""  # no decoder: probes only
    assert row["object_r2"] != "" and row["mask_type"] == ""
    assert not list((logdir / "figures").glob("reconstructions-*.png"))


def test_probe_reads_frames_from_a_runs_replay(tmp_path):
    from mwm.probes.sources import collect_episodes
    from replay.episodes import save_episode

    folder = tmp_path / "run" / "replay"
    folder.mkdir(parents=True)
    for index, episode in enumerate(collect_episodes("toy_catch", {"object_size": 3}, 3, 25, seed=0)):
        length = len(episode["image"])
        episode.update(action=np.zeros((length, 3), np.float32), is_first=np.arange(length) == 0,
                       is_last=np.arange(length) == length - 1, is_terminal=np.zeros(length, bool))
        save_episode(str(folder), episode, index)
    logdir = tmp_path / "p"
    main(["--env", "toy_catch", "--logdir", str(logdir), "--probe.replay", str(tmp_path / "run"),
          "--probe.seeds", "1", *FAST])
    row = read_csv(logdir / "results.csv")[0]
    assert float(row["object_size"]) == 3.0  # the replay's frames, not a fresh collection at size 4


@pytest.mark.parametrize("argv, match", [
    (["--env", "toy_catch", "--method", "byol"], "unknown probe method"),
    (["--env", "toy_catch", "--probe.seeds", "0"], "probe.seeds"),
    (["--env", "toy_catch", "--probe.replay", "/nonexistent/run"], "holds no episode files"),
    (["--env", "toy_catch", "--probe.updatez", "3"], "unknown config key"),
])
def test_user_errors_are_one_line(tmp_path, argv, match):
    with pytest.raises(UserError, match=match):
        main(argv + ["--logdir", str(tmp_path / "x"), "--preset", "tiny"])


def test_help_lists_the_methods():
    out = subprocess.run([sys.executable, "-m", "mwm.probe", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "--method" in out.stdout and "siammae" in out.stdout and "--logdir" in out.stdout
