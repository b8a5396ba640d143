"""Checkpoints: rotation, damaged-file fallback, RNG round trip, refusal of non-finite weights."""

import os
import random

import numpy as np
import pytest
import torch

from mwm.checkpoint import all_finite, load_latest, rng_state, save_checkpoint, set_rng_state


def make_state(step, scale=1.0):
    torch.manual_seed(step)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        model.weight.mul_(scale)
    return {"step": step, "agent": {"model": model.state_dict(), "opt": optimizer.state_dict()}}


def test_keeps_the_newest_checkpoints_and_loads_the_latest(tmp_path):
    for step in (100, 200, 300, 400):
        save_checkpoint(tmp_path, make_state(step), keep=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-300.pt", "checkpoint-400.pt"]
    state, path = load_latest(tmp_path)
    assert path.endswith("checkpoint-400.pt") and state["step"] == 400
    assert torch.equal(state["agent"]["model"]["weight"], make_state(400)["agent"]["model"]["weight"])


def test_never_deletes_the_checkpoint_just_written(tmp_path):
    save_checkpoint(tmp_path, make_state(500), keep=1)
    save_checkpoint(tmp_path, make_state(50), keep=1)  # resumed from an older step
    assert "checkpoint-50.pt" in os.listdir(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    save_checkpoint(tmp_path, make_state(1), keep=3)
    newest = save_checkpoint(tmp_path, make_state(2), keep=3)
    data = bytearray(open(newest, "rb").read())
    if damage == "truncated":
        data = data[: len(data) - 200]
    elif damage == "garbage":
        data = bytearray(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:
        index = data.find(b"data/0") + 200  # inside the first tensor's stored bytes
        data[index] ^= 0xFF
    open(newest, "wb").write(bytes(data))
    with pytest.warns(UserWarning, match="checkpoint-2.pt"):
        state, path = load_latest(tmp_path)
    assert state["step"] == 1 and path.endswith("checkpoint-1.pt")
    assert os.path.exists(newest)


def test_empty_or_missing_folder_gives_none(tmp_path):
    assert load_latest(tmp_path) == (None, None)
    assert load_latest(tmp_path / "absent") == (None, None)


def test_rng_state_round_trip_through_a_checkpoint_reproduces_draws(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, {"step": 1, "rng": rng_state()})
    first = (random.random(), np.random.rand(3), np.random.normal(), torch.rand(3))
    state, _ = load_latest(tmp_path)  # weights_only load must accept the RNG state
    set_rng_state(state["rng"])
    second = (random.random(), np.random.rand(3), np.random.normal(), torch.rand(3))
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    assert torch.equal(first[3], second[3])


def test_refuses_non_finite_weights_and_keeps_the_good_checkpoint(tmp_path):
    good = save_checkpoint(tmp_path, make_state(1))
    before = open(good, "rb").read()
    bad = make_state(2, scale=float("nan"))
    assert not all_finite(bad) and all_finite(make_state(1))
    with pytest.raises(ValueError, match=r"agent\.model\.weight"):
        save_checkpoint(tmp_path, bad)
    inf_module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        inf_module.bias[0] = float("inf")
    assert not all_finite(inf_module)
    assert os.listdir(tmp_path) == ["checkpoint-1.pt"]
    assert open(good, "rb").read() == before


def test_step_is_required(tmp_path):
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, {"weights": torch.ones(1)})
    path = save_checkpoint(tmp_path, {"weights": torch.ones(1)}, step=9)
    assert path.endswith("checkpoint-9.pt")
