"""Synthetic replay data for the benchmarks: random episodes in the step protocol, and a
replay stand-in that serves fixed device batches (to time compute without sampling)."""

from __future__ import annotations

import itertools
from typing import Dict, Iterator, Mapping, Tuple

import numpy as np
import torch

from replay import Replay

Spec = Dict[str, Tuple[tuple, np.dtype]]


def step_spec(obs_space, act_space) -> Spec:
    """(shape, dtype) of every key of one step: the protocol keys and the env's extras."""
    actions = int(act_space.n) if hasattr(act_space, "n") else int(np.prod(act_space.shape))
    spec: Spec = {"action": ((actions,), np.dtype(np.float32)), "reward": ((), np.dtype(np.float32)),
                  "is_first": ((), np.dtype(bool)), "is_last": ((), np.dtype(bool)),
                  "is_terminal": ((), np.dtype(bool))}
    for key, space in obs_space.spaces.items():
        spec[key] = (tuple(space.shape), np.dtype(space.dtype))
    return spec


def random_episode(spec: Spec, length: int, discrete: bool, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """One episode of ``length`` steps with random contents that ends in a terminal step."""
    episode = {}
    for key, (shape, dtype) in spec.items():
        if dtype == np.uint8:
            episode[key] = rng.integers(0, 256, (length, *shape), dtype=np.uint8)
        elif dtype == bool:
            episode[key] = np.zeros((length, *shape), bool)
        else:
            episode[key] = rng.standard_normal((length, *shape)).astype(dtype)
    actions = spec["action"][0][0]
    if discrete:
        episode["action"] = np.eye(actions, dtype=np.float32)[rng.integers(0, actions, length)]
    else:
        episode["action"] = rng.uniform(-1, 1, (length, actions)).astype(np.float32)
    episode["action"][0] = 0.0
    episode["reward"][0] = 0.0
    episode["is_first"][0] = True
    episode["is_last"][-1] = True
    episode["is_terminal"][-1] = True
    return episode


def filled_replay(directory: str, spec: Spec, discrete: bool, steps: int, episode_length: int,
                  seed: int = 0) -> Replay:
    """A RAM replay (nothing written to disk) holding ``steps`` steps of random episodes."""
    rng = np.random.default_rng(seed)
    replay = Replay(directory, capacity=max(steps, episode_length), seed=seed)
    for _ in range(max(1, steps // episode_length)):
        replay.add_episode(random_episode(spec, episode_length, discrete, rng), save=False)
    return replay


def replay_memory(spec: Spec, steps: int, episode_length: int, seed: int = 0) -> Dict[str, int]:
    """Fill a replay in this process and measure it: the growth of the resident memory,
    the bytes the store accounts for, and the raw size of the images and of every key.

    Meant for a fresh process (the benchmark spawns one), where freed memory from earlier
    work cannot hide the growth.
    """
    import tempfile

    from benchmarks._timing import rss_bytes

    with tempfile.TemporaryDirectory() as folder:
        before = rss_bytes()
        replay = filled_replay(folder, spec, True, steps, episode_length, seed)
        grown = rss_bytes() - before
        image_shape, _ = spec["image"]
        return {"steps": replay.num_steps, "rss_growth": grown, "store_bytes": replay.stats()["ram_bytes"],
                "image_bytes": replay.num_steps * int(np.prod(image_shape)),
                "raw_bytes": raw_bytes(spec, replay.num_steps)}


def raw_bytes(spec: Spec, steps: int) -> int:
    """Size of ``steps`` steps stored as plain arrays."""
    return steps * sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in spec.values())


class FixedBatches:
    """Stands in for a :class:`replay.Replay` in ``agent.update``-style calls: ``dataset``
    serves, over and over, a few batches sampled once from ``replay`` and already on
    ``device``, so that a timing covers the update's compute and not the sampling."""

    def __init__(self, replay: Replay, device: torch.device, count: int = 2):
        self.replay = replay
        self.device = device
        self.count = count

    @property
    def num_episodes(self) -> int:
        return self.replay.num_episodes

    def sample(self, batch: int, length: int, prioritize_ends: bool = False) -> Dict[str, np.ndarray]:
        return self.replay.sample(batch, length, prioritize_ends)

    def dataset(self, batch: int, length: int, **_ignored) -> "_Cycle":
        batches = [to_device(self.replay.sample(batch, length), self.device) for _ in range(self.count)]
        return _Cycle(batches)


class _Cycle:
    """An endless iterator over a fixed list, with the prefetcher's ``close``."""

    def __init__(self, items):
        self._it: Iterator = itertools.cycle(items)

    def __iter__(self) -> "_Cycle":
        return self

    def __next__(self):
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())


def to_device(arrays: Mapping[str, np.ndarray], device: torch.device) -> Dict[str, torch.Tensor]:
    """A sampled batch as tensors on ``device`` (object arrays dropped)."""
    return {key: torch.as_tensor(np.asarray(value)).to(device) for key, value in arrays.items()
            if np.asarray(value).dtype != object}
