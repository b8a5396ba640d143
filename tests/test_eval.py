"""``python -m mwm.eval``: a trained toy_catch run evaluated end to end, filmed, and left untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers_runs import ROOT, TINY_RUN, child_env, describe, one_error_line, run_train, snapshot


def run_eval(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mwm.eval", *flags], capture_output=True, text=True, cwd=ROOT,
                          env=child_env(), timeout=300, check=False)


def mp4_frames(path: Path) -> list:
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("eval") / "run"
    result = run_train(logdir, *TINY_RUN, "--steps", "20")
    assert result.returncode == 0, describe(result)
    return logdir


def test_eval_writes_results_and_a_video_with_every_frame(trained, tmp_path):
    before = snapshot(trained)
    video = tmp_path / "film" / "eval.mp4"
    result = run_eval("--logdir", str(trained), "--episodes", "3", "--video", str(video), "--device", "cpu")
    assert result.returncode == 0, describe(result)
    report = json.loads((trained / "eval.json").read_text())
    assert report["episodes"] == 3 and len(report["returns"]) == 3 and len(report["lengths"]) == 3
    assert report["step"] == 20 and report["checkpoint"].endswith("checkpoint-20.pt")
    assert report["mean_return"] == pytest.approx(np.mean(report["returns"]))
    assert report["ci_low"] <= report["mean_return"] <= report["ci_high"]
    assert all(1 <= n <= 8 for n in report["lengths"])  # env.time_limit 8
    # fresh seeds: training's envs use seed + i and seed + 10000
    assert report["env_seed"] >= 100_000 and report["env"] == "toy_catch" and report["agent"] == "mwm"
    assert "return" in result.stdout and "bootstrap" in result.stdout and "length" in result.stdout
    # one frame per step plus each episode's first frame, scaled up with a caption strip
    frames = mp4_frames(video)
    assert len(frames) == sum(report["lengths"]) + 3, (len(frames), report["lengths"])
    assert frames[0].shape[0] >= 256 and frames[0].shape[0] % 2 == 0 and frames[0].shape[1] % 2 == 0
    assert frames[0][:20].max() > 200, "no caption text above the frame"
    assert report["video"] == str(video)
    # the run directory: only eval.json is new
    after = snapshot(trained)
    assert set(after) - set(before) == {"eval.json"}
    assert {k: v for k, v in after.items() if k not in (".", "eval.json")} == \
        {k: v for k, v in before.items() if k != "."}
    assert not list(video.parent.glob(".*.tmp*")), "temp video file left behind"


def test_eval_gif_chosen_checkpoint_and_out_while_the_run_is_locked(trained, tmp_path):
    import fcntl

    from PIL import Image

    before = snapshot(trained)
    with open(trained / ".lock", "a") as lock:  # as a training process would hold it
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_eval("--logdir", str(trained), "--checkpoint", "10", "--episodes", "2", "--seed", "3",
                          "--video", str(tmp_path / "eval.gif"), "--out", str(tmp_path / "e.json"))
    assert result.returncode == 0, describe(result)
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["step"] == 10 and report["checkpoint"].endswith("checkpoint-10.pt")
    assert report["ci_low"] is None and "n=2" in result.stdout  # no interval from 2 episodes
    with Image.open(tmp_path / "eval.gif") as gif:
        assert gif.n_frames == sum(report["lengths"]) + 2
    assert snapshot(trained) == before  # --out elsewhere: nothing in the run directory changed


@pytest.mark.parametrize("flags, needles", [
    (["--checkpoint", "7"], ["no checkpoint at step 7", "available: 10, 20"]),
    (["--episodes", "0"], ["--episodes"]),
    (["--video", "x.avi"], [".mp4 or .gif"]),
])
def test_eval_refuses_bad_flags_in_one_line(trained, flags, needles):
    result = run_eval("--logdir", str(trained), *flags)
    assert result.returncode == 2, describe(result)
    one_error_line(result.stderr, needles)


def test_eval_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = run_eval("--logdir", str(tmp_path))
    assert result.returncode == 2, describe(result)
    one_error_line(result.stderr, ["not a run directory", "--logdir"])
    assert list(tmp_path.iterdir()) == []


def test_summary_interval_only_from_three_episodes():
    from mwm.eval import describe as describe_summary, summarise

    two = summarise([1.0, 3.0], [5, 7])
    assert two["ci_low"] is None and "n=2" in describe_summary(two) and "+1.00, +3.00" in describe_summary(two)
    many = summarise([0.0, 1.0, 2.0, 3.0, 4.0], [5, 6, 7, 8, 9])
    assert 0.0 <= many["ci_low"] < 2.0 < many["ci_high"] <= 4.0
    assert "[+" in describe_summary(many) and "min 5, max 9" in describe_summary(many)
