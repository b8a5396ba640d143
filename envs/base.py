"""The base class every mwm env shares: a gymnasium env that remembers its seed."""

from __future__ import annotations

import gymnasium as gym


class SeededEnv(gym.Env):
    """A gymnasium env whose construction seed applies to its first `reset()`.

    `envs.make(name, seed=s)` builds the env; the first `reset()` without a seed then
    behaves like `reset(seed=s)`, so `make(name, seed=s)` followed by plain resets is
    reproducible. A seed given to `reset` always wins.
    """

    def __init__(self, seed: int | None) -> None:
        self._initial_seed = seed

    def _take_seed(self, seed: int | None) -> int | None:
        """Return the seed this reset should use and forget the construction seed."""
        if seed is None:
            seed = self._initial_seed
        self._initial_seed = None
        return seed
