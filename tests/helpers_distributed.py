"""Rank processes for tests/test_distributed.py: gloo on 127.0.0.1, one thread each.

Each scenario runs on every rank and returns a dict of tensors; the rank writes it to
``<out>/rank<k>.pt`` for the test to compare.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch

AGENTS = ("mwm", "dreamerv2", "siammae", "curl")
OBS_SHAPE = (64, 64, 3)  # toy_catch
ACTIONS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toy_episode(steps: int, seed: int) -> dict:
    """A random toy_catch-shaped episode (images, one-hot actions, rewards)."""
    rng = np.random.default_rng(seed)
    action = np.eye(ACTIONS, dtype=np.float32)[rng.integers(ACTIONS, size=steps)]
    action[0] = 0.0
    return {
        "image": rng.integers(0, 256, (steps, *OBS_SHAPE), dtype=np.uint8),
        "action": action,
        "reward": rng.normal(size=steps).astype(np.float32),
        "is_first": np.arange(steps) == 0,
        "is_last": np.arange(steps) == steps - 1,
        "is_terminal": np.zeros(steps, dtype=bool),
    }


def make(agent_name: str, overrides=(), device: str = "cpu"):
    import gymnasium as gym

    from agents.registry import make_agent
    from mwm import config

    cfg = config.build("toy_catch", agent_name, "tiny", list(overrides))
    obs_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)})
    return make_agent(cfg, obs_space, gym.spaces.Discrete(ACTIONS), torch.device(device))


def deterministic_sampling() -> None:
    """Latent and action samples become the distributions' modes (straight-through as before), so that an
    update depends on its data alone and a batch split over ranks can be compared with the whole batch."""
    from mwm.distributions import OneHotCategorical

    OneHotCategorical.sample = OneHotCategorical.mode


def fixed_batch(size: int, length: int, seed: int = 0) -> dict:
    """(size, length) world-model batch of random toy_catch-shaped sequences (each starts an episode)."""
    episode = [toy_episode(length, seed * 1000 + i) for i in range(size)]
    batch = {key: torch.as_tensor(np.stack([e[key] for e in episode]))
             for key in ("image", "action", "reward", "is_first", "is_terminal")}
    return batch


def split_update(agent, batch: dict) -> dict:
    """One world-model step then one actor-critic step on ``batch``; the metrics."""
    metrics, post = agent.world_model_step(batch)
    metrics.update(agent.actor_critic_step({"post": post, "is_terminal": batch["is_terminal"]}))
    return metrics


def scenario_identical(rank: int, size: int, tmp: Path, cuda: bool = False) -> dict:
    """Every agent: K updates, each rank on its own replay shard; the parameters afterwards. With ``cuda``
    rank k runs on cuda:k with the config's speed block (fused Adam, CUDA graphs, bf16)."""
    from mwm import distributed
    from mwm.runtime import seed_everything
    from replay import Replay

    out = {}
    for name in AGENTS:
        seed_everything(0)
        agent = make(name, device=f"cuda:{rank}" if cuda else "cpu")
        distributed.share_state(agent, {"step": 0}, seed=0)  # rank 0's weights; generators apart
        replay = Replay(str(tmp / name / f"rank{rank}"), capacity=1000, seed=rank)
        for i in range(3):
            replay.add_episode(toy_episode(24, seed=100 * rank + i))
        first = [p.detach().clone() for p in agent.parameters()]
        losses = []
        for _ in range(3):
            metrics = agent.update(replay)
            losses.append(float(metrics.get("model/loss", metrics.get("rainbow/loss", torch.tensor(0.0)))))
        if hasattr(agent, "close"):
            agent.close()
        out[name] = {"params": [p.detach().cpu().clone() for p in agent.parameters()],
                     "first": [p.cpu() for p in first],
                     "losses": losses}
    return out


def scenario_split(rank: int, size: int, tmp: Path, agent_name: str = "mwm", per_rank: int = 2,
                   overrides=()) -> dict:
    """One world-model + actor-critic update on this rank's part of a fixed batch."""
    from mwm.runtime import seed_everything

    deterministic_sampling()
    seed_everything(0)
    agent = make(agent_name, overrides)
    batch = fixed_batch(per_rank * size, 8)
    part = {key: value[rank * per_rank:(rank + 1) * per_rank] for key, value in batch.items()}
    metrics = split_update(agent, part)
    return {"params": {k: v.detach().clone() for k, v in agent.named_parameters()},
            "buffers": {k: v.detach().clone() for k, v in agent.named_buffers()},
            "metrics": {k: torch.as_tensor(v).detach().clone() for k, v in metrics.items()}}


def scenario_startup(rank: int, size: int, tmp: Path) -> dict:
    """The start-up agreements: an error on rank 1 alone, then configs that differ on rank 1."""
    from mwm import config, distributed
    from mwm.errors import UserError

    distributed.QUIET_EXIT_DELAY_S = 0.0
    out = {}
    for name, call in (
            ("agree", lambda: distributed.agree(UserError("cannot open the env") if rank == 1 else None)),
            ("config", lambda: distributed.check_same_config(
                config.build("toy_catch", "mwm", "tiny", [f"replay.batch={4 + rank}"]))),
            ("same", lambda: distributed.check_same_config(config.build("toy_catch", "mwm", "tiny")))):
        try:
            call()
            out[name] = "ok"
        except UserError as exc:
            out[name] = f"UserError: {exc}"
        except distributed.PeerFailed as exc:
            out[name] = f"PeerFailed {exc.code}"
    # the logged scalars: each rank's mean, then the mean over the ranks that logged it (replay/steps: the sum)
    logger = distributed.make_logger(lambda: distributed.QuietLogger())  # rank 0 would make the real one
    logger.scalars({"loss": torch.tensor(float(rank)), "replay/steps": 10 * (rank + 1)})
    logger.scalar("loss", 2.0 * rank)
    if rank == 1:
        logger.scalar("train/return", 7.0)
    distributed.reduce_logged(logger)
    out["logged"] = logger.queued()
    out["flags"] = (distributed.any_rank(rank == 1), distributed.all_ranks(rank == 1), distributed.all_ranks(True))
    return out


def scenario_nonfinite(rank: int, size: int, tmp: Path) -> dict:
    """Rank 1's world-model batch holds a NaN reward: every rank must skip that world-model update."""
    from mwm.runtime import seed_everything

    deterministic_sampling()
    seed_everything(0)
    agent = make("dreamerv2")
    batch = fixed_batch(2 * size, 8)
    part = {key: value[rank * 2:(rank + 1) * 2].clone() for key, value in batch.items()}
    if rank == 1:
        part["reward"][0, 3] = float("nan")
    before = {k: v.detach().clone() for k, v in agent.named_parameters()}
    metrics = split_update(agent, part)
    return {"before": before, "after": {k: v.detach().clone() for k, v in agent.named_parameters()},
            "model_nonfinite": int(agent.wm_opt.nonfinite_in_row), "model_loss": float(metrics["model/loss"])}


def scenario_replay_resume(rank: int, size: int, tmp: Path) -> dict:
    """Each rank's replay sampler state goes into rank 0's checkpoint and comes back to that rank."""
    from mwm import distributed
    from replay import Replay

    replay = Replay(tmp / f"rank{rank}", capacity=1000, seed=rank)
    replay.set_rng_state(np.random.default_rng(100 + rank).bit_generator.state)  # where its sampling had got to
    gathered = distributed.replay_states(replay)
    resumed = Replay(tmp / f"rank{rank}", capacity=1000, seed=rank)  # a restarted rank: its seed's sampler
    fresh = resumed.rng_state()
    layer = torch.nn.Linear(2, 2)
    counters = distributed.share_state(layer, {"step": 40}, 0, resumed, gathered if rank == 0 else None)
    return {"saved": replay.rng_state(), "gathered": gathered, "fresh": fresh, "resumed": resumed.rng_state(),
            "counters": counters}


SCENARIOS = {"nonfinite": scenario_nonfinite, "identical": scenario_identical, "split": scenario_split,
             "startup": scenario_startup, "replay_resume": scenario_replay_resume}


def run_rank(rank: int, size: int, port: int, out: str, scenario: str, kwargs: dict, backend: str) -> None:
    """torch.multiprocessing.spawn target: join the gloo group, run ``scenario``, save what it returns."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from mwm import distributed

    if backend != "gloo":
        torch.cuda.set_device(rank)
    distributed.init(distributed.World(rank, size, rank), backend, timeout=120)
    try:
        result = SCENARIOS[scenario](rank, size, Path(out), **kwargs)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.close()


def spawn(scenario: str, out: Path, size: int = 2, backend: str = "gloo", **kwargs) -> list:
    """Run ``scenario`` on ``size`` gloo ranks; each rank's result, in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(run_rank, args=(size, free_port(), str(out), scenario, kwargs, backend), nprocs=size, join=True)
    return [torch.load(out / f"rank{k}.pt", weights_only=False) for k in range(size)]
