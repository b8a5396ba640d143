"""What a user watches during training: pre-training's logs, and progress bars that are drawn
once, also when a signal stops the run (on a terminal and in a log file)."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import sys
import time

import pytest
from helpers_runs import ROOT, TINY_RUN, child_env, main_exit_code, override

from mwm import train as train_mod
from mwm import updater as updater_mod
from mwm.logger import Progress


def test_pretraining_logs_every_log_every_updates_and_a_resume_continues_them(tmp_path, monkeypatch, capsys,
                                                                           restore_signals):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "run"
    # prefill ends at step 20 with two finished episodes; 7 pre-training updates logged every 3;
    # no scheduled update, so the first log line after pre-training holds its last update's metrics
    argv = ["--logdir", str(logdir), *override(TINY_RUN, "--steps", "21", "--run.prefill", "20", "--run.pretrain",
                                               "7", "--run.log_every", "3", "--run.train_every", "1000")]

    def sigterm_in_the_fifth_update(point, tag):
        if point == "update" and tag == 4:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(updater_mod, "maybe_kill", sigterm_in_the_fifth_update)
    assert main_exit_code(argv) == 0  # stops after the fifth update, which it finishes and logs
    monkeypatch.undo()
    assert main_exit_code(argv) == 0  # resumes: updates 6 and 7
    assert "pretrain/" not in capsys.readouterr().out  # the bar shows the loss; no console line

    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    pretraining = [row for row in rows if "pretrain/updates" in row]
    assert [row["pretrain/updates"] for row in pretraining] == [3, 5, 6, 7]
    assert [row["step"] for row in pretraining] == [20, 20, 21, 21]  # the agent step (the resumed run's first is 21)
    assert [row["step"] for row in rows] == sorted(row["step"] for row in rows)
    assert all(not key.startswith("pretrain/") for row in rows if row not in pretraining for key in row)
    last_log = next(row for row in rows if row["step"] == 21 and row not in pretraining)
    assert pretraining[-1]["pretrain/mae/loss"] == last_log["mae/loss"]  # the 7th update's, alone in its window
    assert len({row["pretrain/mae/loss"] for row in pretraining}) == 4

    events = EventAccumulator(str(logdir))
    events.Reload()
    points = events.Scalars("pretrain/mae/loss")  # against pre-training's update count, not the agent step
    assert [p.step for p in points] == [3, 5, 6, 7]
    assert [p.value for p in points] == pytest.approx([row["pretrain/mae/loss"] for row in pretraining], rel=1e-6)


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def screen(text: str) -> list:
    """The lines a terminal shows after printing ``text``: ``\\r`` returns to the line's start,
    ``ESC[K`` erases to its end."""
    lines, row, col, i = [[]], 0, 0, 0
    while i < len(text):
        if text.startswith("\x1b[K", i):
            del lines[row][col:]
            i += 3
            continue
        char = text[i]
        if char == "\r":
            col = 0
        elif char == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append([])
        else:
            lines[row][col:col + 1] = [char]
            col += 1
        i += 1
    return ["".join(line) for line in lines]


def test_a_stop_message_takes_the_place_of_the_bar_on_a_terminal(monkeypatch):
    terminal = FakeTty()  # stdout and stderr on one terminal
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = Progress(10, keys=("loss",), stream=terminal, redraw_s=0.0, unit="updates")
    bar.update(3, loss=0.5)
    train_mod.StopFlag()._handle(signal.SIGTERM, None)
    bar.update(4, loss=0.25)  # the update under way finishes
    bar.close()
    lines = [line for line in screen(terminal.getvalue()) if line]
    assert len(lines) == 2, lines
    assert lines[0].startswith("SIGTERM: finishing this step")
    assert lines[1].startswith("[########............] 4/10 40%") and lines[1].endswith("loss 0.25")


def test_a_log_line_takes_the_place_of_the_bar_on_a_terminal(tmp_path):
    from mwm.logger import Logger

    terminal = FakeTty()
    bar = Progress(100, stream=terminal, redraw_s=0.0)
    logger = Logger(str(tmp_path), use_tensorboard=False, stream=terminal)
    bar.update(29)
    logger.scalar("train/frames", 30)
    logger.write(30)
    bar.update(31)
    bar.close()
    logger.close()
    assert [line for line in screen(terminal.getvalue()) if line][0] == "step 30 | frames 30"
    assert len([line for line in screen(terminal.getvalue()) if "/100" in line]) == 1


def test_closing_a_bar_repeats_no_plain_line():
    now = {"t": 0.0}
    out = io.StringIO()
    bar = Progress(100, keys=("return",), stream=out, line_every_s=30, clock=lambda: now["t"])
    bar.update(1)
    now["t"] = 40.0
    bar.update(50, **{"return": 1.0})  # drawn: 30 s since the last line
    bar.close()  # a stop right after it: nothing new to show
    assert [line.split(" ")[1] for line in out.getvalue().splitlines()] == ["1/100", "50/100"]
    bar.update(60, **{"return": 1.0})
    bar.close()
    assert out.getvalue().splitlines()[-1].split(" ")[1] == "60/100"


@pytest.mark.skipif(not hasattr(os, "openpty") or sys.platform == "win32", reason="needs a pseudo-terminal")
def test_sigterm_during_pretraining_leaves_each_bar_once_on_the_terminal(tmp_path):
    """The real thing: ``python -m mwm.train`` on a pseudo-terminal, SIGTERM once pre-training is drawn."""
    import pty
    import subprocess

    logdir = tmp_path / "run"
    command = [sys.executable, "-m", "mwm.train", "--logdir", str(logdir),
               *override(TINY_RUN, "--steps", "60", "--run.prefill", "20", "--run.pretrain", "5000",
                         "--run.log_every", "6")]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, cwd=ROOT,
                            env=child_env())
    os.close(follower)
    output, signalled, deadline = b"", False, time.time() + 240
    while time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            output += data
        if not signalled and b" updates/s " in output.split(b"pre-training:")[-1]:
            proc.send_signal(signal.SIGTERM)  # the pre-training bar has been drawn with a rate
            signalled = True
    os.close(leader)
    assert proc.wait(timeout=60) == 0 and signalled, output.decode(errors="replace")[-3000:]
    lines = screen(output.decode())
    shown = "\n".join(lines)
    assert sum("/5000 " in line for line in lines) == 1, shown  # the pre-training bar
    assert sum("/60 " in line for line in lines) == 1, shown  # the run's bar
    assert sum(line.startswith("SIGTERM: ") for line in lines) == 1, shown
    assert lines[[i for i, line in enumerate(lines) if line.startswith("SIGTERM")][0] + 1].startswith("[")
    assert any(line.startswith("step 18 | frames 18") for line in lines), shown  # log lines stay whole
    assert "stopped by SIGTERM" in shown


def test_a_slow_pretraining_bar_reads_seconds_per_update(tmp_path, monkeypatch, capsys, restore_signals):
    """Below one update per second the bar reads ``2.0 s/update``, not ``0.5 updates/s`` (or ``0.0``)."""
    pretrain = updater_mod.Updater.pretrain

    def slow_pretrain(self):
        time.sleep(1.2)
        return pretrain(self)

    monkeypatch.setattr(updater_mod.Updater, "pretrain", slow_pretrain)
    assert main_exit_code(["--logdir", str(tmp_path / "run"),
                           *override(TINY_RUN, "--steps", "20", "--run.prefill", "20", "--run.pretrain", "3")]) == 0
    bars = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[") and "/3 " in line]
    assert len(bars) == 2, bars  # the first update's line (no rate yet) and the final one
    assert "- updates/s" in bars[0]
    rate = bars[1].split(" 100% ")[1].split(" ETA")[0]
    assert rate.endswith(" s/update") and 1.0 <= float(rate.split(" ")[0]) < 10, bars[1]
