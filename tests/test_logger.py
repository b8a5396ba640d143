"""Logger sinks (jsonl, TensorBoard, console) and the Progress line."""

import io
import json
import math

import numpy as np
import pytest
import torch

from mwm.logger import Logger, Progress, format_duration, format_line, format_rate


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_appends_one_json_object_per_call_with_averaged_values(tmp_path):
    console = io.StringIO()
    logger = Logger(tmp_path, use_tensorboard=False, stream=console)
    logger.scalar("loss", torch.tensor(1.0))
    logger.scalar("loss", 3.0)
    logger.scalars({"return": np.float32(2.5), "bad": float("nan")}, prefix="train")
    assert logger.write(step=10) == {"loss": 2.0, "train/return": 2.5, "train/bad": pytest.approx(math.nan, nan_ok=True)}
    logger.scalar("loss", 5)
    logger.write(step=20)
    logger.write(step=30)  # nothing pending: no line
    logger.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 10, "loss": 2.0, "train/return": 2.5, "train/bad": None},
        {"step": 20, "loss": 5.0},
    ]
    lines = console.getvalue().splitlines()
    assert lines[0] == "step 10 | return 2.5 | loss 2"
    reopened = Logger(tmp_path, use_tensorboard=False, console=False)
    reopened.scalar("loss", 1)
    reopened.write(40)
    reopened.close()
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 3  # appended, not truncated


def test_step_fn_supplies_the_step(tmp_path):
    counter = {"step": 7}
    with Logger(tmp_path, step_fn=lambda: counter["step"], use_tensorboard=False, console=False) as logger:
        logger.scalar("x", 1)
        logger.write()
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["step"] == 7
    with Logger(tmp_path / "b", use_tensorboard=False, console=False) as logger:
        with pytest.raises(ValueError, match="step"):
            logger.write()


def test_tensorboard_receives_scalars_images_and_gif_videos(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = Logger(tmp_path, console=False)
    logger.scalar("loss", torch.tensor([0.5]))
    logger.image("recon", np.full((8, 8, 3), 0.5, np.float32))
    logger.video("openl", torch.randint(0, 256, (4, 8, 8, 1), dtype=torch.uint8))
    logger.write(step=3)
    logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 0.5)]
    assert events.Images("recon")[0].width == 8
    gif = events.Images("openl")[0].encoded_image_string
    assert gif.startswith(b"GIF8")


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_progress_plain_lines_when_not_a_terminal():
    now = {"t": 0.0}
    out = io.StringIO()
    progress = Progress(200, keys=("return",), stream=out, line_every_s=30, clock=lambda: now["t"])
    for step in range(0, 101, 10):
        now["t"] = step / 10  # 10 steps per second
        progress.update(step, **{"return": 4.25, "loss": 1.0})
    now["t"] = 31.0
    progress.update(310 // 3, **{"return": 5.0})
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2  # the first update and the one 30 s later
    assert "103/200" in lines[1] and "return 5" in lines[1] and "loss" not in lines[1]


def test_progress_redraws_in_place_on_a_terminal():
    now = {"t": 0.0}
    out = FakeTty()
    progress = Progress(200, stream=out, redraw_s=0.0, clock=lambda: now["t"])
    progress.update(0)
    now["t"] = 10.0
    progress.update(100, **{"return": 1.5})
    progress.close()
    assert out.getvalue().count("\r") == 3 and out.getvalue().endswith("\n")
    line = progress.render()
    assert "100/200 50%" in line and "10.0 steps/s" in line and "ETA 0:00:10" in line


def test_progress_names_its_unit():
    now = {"t": 0.0}
    progress = Progress(1000, keys=("loss",), stream=io.StringIO(), unit="updates", clock=lambda: now["t"])
    progress.update(0)
    now["t"] = 4.0
    progress.update(100, loss=torch.tensor(0.5))  # a scalar tensor is read when drawn
    line = progress.render()
    assert "100/1000 10%" in line and "25.0 updates/s" in line and "ETA 0:00:36" in line and "loss 0.5" in line


def test_format_duration():
    assert format_duration(3725) == "1:02:05"
    assert format_duration(math.inf) == "?"


def test_console_line_shows_what_people_look_for_first_in_a_fixed_order():
    # logged in an order of their own, with many auxiliary metrics sorting before them
    scalars = {f"ac/aux_{i}": float(i) for i in range(12)}
    scalars.update({"speed/updates_per_s": 2.5, "mae/loss": 0.25, "wm/kl": 1.0, "model/loss": 3.5,
                    "speed/env_steps_per_s": 123.4, "eval/return": 4.0, "actor/loss": -0.5,
                    "train/return": 3.25, "critic/loss": 0.125, "train/frames": 4000.0, "replay/steps": 9.0})
    line = format_line(1000, scalars)
    assert line == ("step 1000 | frames 4000 | return 3.25 | eval 4 | mae/loss 0.25 | model/loss 3.5 | "
                    "actor/loss -0.5 | critic/loss 0.125 | fps 123 | 2.5 updates/s")
    slow = format_line(5, {"speed/updates_per_s": 0.2, "train/return": 1.0})
    assert slow == "step 5 | return 1 | 5.0 s/update"
    # the mean of the last episodes wins over those since the last line (there may be none)
    assert format_line(6, {"train/return": 1.0, "train/recent_return": 2.0}) == "step 6 | return 2"
    # another tool's names: its first scalars, sorted
    assert format_line(3, {"b": 2.0, "a": 1.0}) == "step 3 | a 1 | b 2"


def test_rates_below_one_per_second_read_as_seconds_per_update():
    assert format_rate(12.5) == "12.5 updates/s"
    assert format_rate(0.25) == "4.0 s/update"
    assert format_rate(0.0) == "0 updates/s"
    assert format_rate(0.5, "steps") == "2.0 s/step"
    now = {"t": 0.0}
    out = io.StringIO()
    progress = Progress(10, keys=("loss",), stream=out, redraw_s=0.0, clock=lambda: now["t"], unit="updates")
    progress.update(0)
    assert "- updates/s" in progress.render()  # no rate before the first update is done
    now["t"] = 30.0
    progress.update(3, loss=1.5)
    line = progress.render()
    assert "10.0 s/update" in line and "0.1 updates/s" not in line and "ETA 0:01:10" in line
