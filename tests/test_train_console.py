"""What a user watches during training: pre-training's logs."""

from __future__ import annotations

import json
import signal

import pytest
from helpers_runs import TINY_RUN, override

from mwm import cli
from mwm import train as train_mod
from mwm import updater as updater_mod


@pytest.fixture
def restore_signals():
    """main() installs SIGINT / SIGTERM handlers; put pytest's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_in_process(argv) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda: train_mod.main(argv))
    assert exit_info.value.code == 0


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
    run_in_process(argv)  # stops after the fifth update, which it finishes and logs
    monkeypatch.undo()
    run_in_process(argv)  # resumes: updates 6 and 7
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
