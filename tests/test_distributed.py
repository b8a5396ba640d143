"""Data-parallel training (mwm/distributed.py): 2 CPU ranks over gloo, against one process."""

from __future__ import annotations

import pytest
import torch

from helpers_distributed import AGENTS, deterministic_sampling, scenario_split, spawn
from mwm import distributed
from mwm.errors import UserError


def test_every_agent_keeps_bitwise_identical_parameters_over_ranks(tmp_path):
    """Each rank samples its own replay shard (different episodes); after 3 updates both ranks hold
    exactly the same parameters (and optimiser states), which moved from where they started."""
    ranks = spawn("identical", tmp_path)
    for name in AGENTS:
        zero, one = ranks[0][name], ranks[1][name]
        assert all(torch.equal(a, b) for a, b in zip(zero["first"], one["first"])), name  # rank 0's start
        assert all(torch.equal(a, b) for a, b in zip(zero["params"], one["params"])), name
        assert any(not torch.equal(a, b) for a, b in zip(zero["first"], zero["params"])), name
        assert zero["losses"] == one["losses"], name  # the loss each optimiser reports is the ranks' mean


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overrides", [(), ("wm.token_norm=true", "ac.return_norm=true")],
                         ids=["plain", "running-statistics"])
def test_two_ranks_of_batch_b_update_like_one_process_of_batch_2b(tmp_path, monkeypatch, overrides):
    """World model and actor-critic: one update with 2 sequences on each of 2 ranks equals one update with
    the 4 sequences in one process (same weights, same data, sampling made deterministic), and differs
    from an update on one rank's half alone. With token standardisation and return normalisation on,
    their running statistics are those of the whole batch too."""
    ranks = spawn("split", tmp_path, per_rank=2, overrides=overrides)
    from mwm.distributions import OneHotCategorical

    monkeypatch.setattr(OneHotCategorical, "sample", OneHotCategorical.sample)  # undone after the test
    deterministic_sampling()
    whole = scenario_split(0, 1, tmp_path, per_rank=4, overrides=overrides)
    half = scenario_split(0, 1, tmp_path, per_rank=2, overrides=overrides)
    params = ranks[0]["params"]
    assert all(torch.equal(params[k], ranks[1]["params"][k]) for k in params)
    for prefix in ("wm.", "ac.actor.", "ac.critic."):
        names = [k for k in params if k.startswith(prefix)]
        assert names, prefix
        assert all(_close(params[k], whole["params"][k]) for k in names), prefix
        assert not all(_close(params[k], half["params"][k]) for k in names), prefix
    for key in ("model/loss", "actor/loss", "critic/loss", "model/grad_norm"):
        assert _close(ranks[0]["metrics"][key], whole["metrics"][key]), key
    for name, value in whole["buffers"].items():
        assert _close(ranks[0]["buffers"][name], value), name
    if overrides:
        assert not _close(half["buffers"]["token_norm.mean"], whole["buffers"]["token_norm.mean"])


# ----------------------------------------------------------------------------- one process, no group


def test_one_process_is_untouched():
    """Without torchrun's variables the world is one process and every hook returns its input."""
    assert distributed.from_environment({}) == distributed.World()
    assert not distributed.world().active
    grad = torch.ones(3)
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = grad
    loss = torch.tensor(2.0)
    assert distributed.average_gradients([param], loss) is loss and param.grad is grad
    assert distributed.replay_dir("x/replay").as_posix() == "x/replay"
    assert distributed.rank_seed(5, 4) == 5 and distributed.agent_steps(3) == 3
    assert distributed.any_rank(True) and not distributed.all_ranks(False)


def test_torchrun_variables_are_read_and_checked():
    world = distributed.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert world == distributed.World(3, 4, 1) and world.active and not world.writer
    assert distributed.rank_seed.__defaults__ == (1,)
    for env in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(UserError):
            distributed.from_environment(env)


def test_nccl_on_cpu_is_one_clear_error():
    with pytest.raises(UserError, match="nccl needs CUDA devices"):
        distributed.backend_for("nccl", torch.device("cpu"))
    assert distributed.backend_for("auto", torch.device("cpu")) == "gloo"


def test_global_batch_splits_over_ranks_or_is_refused():
    from mwm import config

    cfg = config.build("toy_catch", "dreamerv2", "tiny", ["dist.global_batch=8"])
    four = distributed.World(0, 4, 0)
    assert distributed.resolve_overrides(cfg, ["dist.global_batch=8"], four) == [
        "dist.global_batch=8", "dist.world_size=4", "replay.batch=2"]
    with pytest.raises(UserError, match="does not split over 3 ranks"):
        distributed.resolve_overrides(cfg, [], distributed.World(0, 3, 0))
    cfg = config.build("toy_catch", "dreamerv2", "tiny", ["dist.global_batch=8", "replay.batch=3"])
    with pytest.raises(UserError, match="disagree"):
        distributed.resolve_overrides(cfg, ["dist.global_batch=8", "replay.batch=3"], four)
    with pytest.raises(UserError, match="set by torchrun|number of processes"):
        distributed.resolve_overrides(cfg, ["dist.world_size=2"], four)
