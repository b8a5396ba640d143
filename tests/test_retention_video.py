"""Checkpoint retention (run.keep_checkpoints, run.milestone_every) and evaluation videos in
TensorBoard (run.video_every), on tiny toy_catch runs."""

from __future__ import annotations

import io

import pytest

from helpers_runs import TINY_RUN, checkpoint_files, describe, load_counters, run_train


def milestone_steps(logdir):
    return sorted(int(p.stem.split("-")[1]) for p in (logdir / "checkpoints" / "milestones").glob("checkpoint-*.pt"))


def test_retention_milestones_and_eval_videos(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "run"
    flags = [*TINY_RUN, "--run.prefill", "10", "--run.milestone_every", "20", "--run.video_every", "20"]
    result = run_train(logdir, *flags, "--steps", "50", "--run.keep_checkpoints", "3")
    assert result.returncode == 0, describe(result)
    assert sorted(checkpoint_files(logdir)) == [30, 40, 50]  # the newest three
    assert milestone_steps(logdir) == [20, 40]  # kept apart from the rotation
    assert load_counters(logdir / "checkpoints" / "milestones" / "checkpoint-20.pt")["step"] == 20
    from mwm.eval import load_checkpoint  # mwm.eval --checkpoint finds milestones too

    state, path = load_checkpoint(logdir / "checkpoints", 20, "cpu")
    assert path.parent.name == "milestones" and state["counters"]["step"] == 20

    # retention may change on resume; the milestones stay
    result = run_train(logdir, *flags, "--steps", "70", "--run.keep_checkpoints", "1")
    assert result.returncode == 0, describe(result)
    assert sorted(checkpoint_files(logdir)) == [70]
    assert milestone_steps(logdir) == [20, 40, 60]

    events = EventAccumulator(str(logdir), size_guidance={"images": 0})
    events.Reload()
    videos = events.Images("eval/video")
    assert sorted({v.step for v in videos}) == [20, 40, 60]
    for video in videos:
        with Image.open(io.BytesIO(video.encoded_image_string)) as gif:
            # one episode of the eval policy: its first frame and one per step (env.time_limit 8)
            assert gif.n_frames == 9 and gif.size == (64, 64)


@pytest.mark.parametrize("key, value", [("run.keep_checkpoints", "0"), ("run.milestone_every", "-1"),
                                        ("run.video_every", "-5")])
def test_retention_and_video_settings_are_checked(key, value):
    from mwm import config as config_lib
    from mwm.errors import UserError

    with pytest.raises(UserError, match=key):
        config_lib.build("toy_catch", "mwm", "tiny", [f"{key}={value}"])
