"""A run stopped by SIGTERM and resumed learns exactly what the same run uninterrupted learns.

What can be equal: a checkpoint carries the weights, the optimiser states, the counters
and every random generator the learner draws from (python, numpy, torch and the replay's
sampler). What cannot: the envs start again from a reset and the unfinished episodes
are lost (mwm/train.py, "work done after it is redone"), so the two runs see different
env steps after the stop. The run below is laid out so that this cannot reach the
learner: 9-step episodes end at steps 8, 17, 26, 35, 44, ..., the stop comes at step 35
as an episode ends, and the comparison at step 41 comes before either run finishes
another episode (the resumed env's first one ends at 35 + 8). Replay samples finished
episodes only, so both runs train on the same data from the same generators.

Equality is bitwise: on a CPU with one torch thread the same operations on the same
inputs in the same order give the same bits (and ``replay.prefetch`` is 0 in the tiny
preset, so sampling happens in program order, not on a background thread).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import torch
from helpers_runs import TINY_RUN, checkpoint_files, main_exit_code, override

from mwm import train as train_mod

STOP_AT, COMPARE_AT = 35, 41
FLAGS = override(TINY_RUN, "--steps", str(COMPARE_AT), "--run.prefill", "20", "--run.train_every", "3",
                 "--run.train_steps", "2", "--run.log_every", "5", "--run.checkpoint_every", "1000")


def train(logdir: Path, monkeypatch, sigterm_at: int = 0) -> None:
    """``python -m mwm.train`` in this process, sent SIGTERM after step ``sigterm_at`` (0: never)."""
    def hook(point, tag):
        if point == "step" and tag == sigterm_at:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(train_mod, "maybe_kill", hook)
    assert main_exit_code(["--logdir", str(logdir), *FLAGS]) == 0


def tensors(value, key=""):
    """(dotted key, value) of every leaf of a nested checkpoint."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from tensors(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from tensors(item, f"{key}.{index}")
    else:
        yield key, value


def assert_same(a, b, what: str) -> None:
    a, b = dict(tensors(a)), dict(tensors(b))
    assert a.keys() == b.keys(), (what, sorted(set(a) ^ set(b))[:5])
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{what}: {key} differs"
        else:
            assert a[key] == b[key], f"{what}: {key} is {a[key]!r}, not {b[key]!r}"


def next_batch(logdir: Path, state: dict) -> dict:
    """The batch the run's next autoencoder update would draw: its replay, its saved sampler state."""
    from omegaconf import OmegaConf

    from replay import Replay

    cfg = OmegaConf.load(logdir / "config.yaml")
    replay = Replay(logdir / "replay", capacity=cfg.replay.capacity, seed=12345)  # the saved state must win
    replay.load()
    replay.set_rng_state(state["rng"]["replay"])
    return replay.sample(cfg.mae.batch, cfg.mae.length, prioritize_ends=cfg.replay.prioritize_ends)


def losses(logdir: Path) -> dict:
    """step -> the loss values of the log lines after the stop."""
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: {k: v for k, v in row.items() if k.endswith("loss")} for row in rows
            if row["step"] >= STOP_AT and any(k.endswith("loss") for k in row)}


def test_a_run_resumed_after_sigterm_equals_the_uninterrupted_run(tmp_path, monkeypatch, restore_signals):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(whole, monkeypatch)
    train(resumed, monkeypatch, sigterm_at=STOP_AT)
    assert sorted(checkpoint_files(resumed)) == [STOP_AT]
    train(resumed, monkeypatch)
    states = [torch.load(checkpoint_files(run)[COMPARE_AT], map_location="cpu", weights_only=True)
              for run in (whole, resumed)]
    assert states[0]["counters"] == states[1]["counters"]
    assert states[0]["counters"]["updates"] > torch.load(checkpoint_files(resumed)[STOP_AT],
                                                         weights_only=True)["counters"]["updates"]
    assert states[0]["counters"]["episodes"] == 4  # no episode ended between the stop and the comparison
    assert_same(states[0]["agent"]["optimizers"], states[1]["agent"]["optimizers"], "optimiser state")
    assert_same(states[0]["agent"], states[1]["agent"], "weights")
    assert_same(states[0]["rng"], states[1]["rng"], "random generators")
    batches = [next_batch(run, state) for run, state in zip((whole, resumed), states)]
    assert batches[0].keys() == batches[1].keys()
    for key in batches[0]:
        np.testing.assert_array_equal(batches[0][key], batches[1][key], err_msg=f"next batch: {key}")
    logged = [losses(run) for run in (whole, resumed)]
    assert sorted(logged[0]) == [35, 40, 41] and logged[0] == logged[1]


def test_a_checkpoint_from_before_the_newer_entries_still_resumes(tmp_path, monkeypatch, capsys, restore_signals):
    """Checkpoints written before ``counters["pretrain_updates"]`` and ``rng["replay"]`` existed."""
    logdir = tmp_path / "run"
    flags = override(TINY_RUN, "--run.prefill", "20")  # pre-training (2 updates) at step 20
    assert main_exit_code(["--logdir", str(logdir), *flags, "--steps", "20"]) == 0
    path = checkpoint_files(logdir)[20]
    state = torch.load(path, weights_only=True)
    assert state["counters"]["pretrained"] and state["counters"]["pretrain_updates"] == 2
    del state["counters"]["pretrain_updates"], state["rng"]["replay"]
    torch.save(state, path)
    capsys.readouterr()
    assert main_exit_code(["--logdir", str(logdir), *flags, "--steps", "25"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "at step 20" in out and "pre-training" not in out
    counters = torch.load(checkpoint_files(logdir)[25], weights_only=True)["counters"]
    # 2 pre-training updates and the scheduled ones at steps 20 and 25 (run.train_every 5)
    assert counters["pretrain_updates"] == 2 and counters["step"] == 25 and counters["updates"] == 4
