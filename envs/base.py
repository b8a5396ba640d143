"""The base class every mwm env shares: a gymnasium env that remembers its seed and
renders its latest observation for gymnasium's video tools."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from mwm.errors import UserError

RENDER_MODES = ("rgb_array",)


class SeededEnv(gym.Env):
    """A gymnasium env whose construction seed applies to its first `reset()`.

    `envs.make(name, seed=s)` builds the env; the first `reset()` without a seed then
    behaves like `reset(seed=s)`, so `make(name, seed=s)` followed by plain resets is
    reproducible. A seed given to `reset` always wins.

    `render_mode="rgb_array"` makes `render()` return the latest observation image as
    RGB uint8 (H, W, 3) (grayscale repeated to three channels), so gymnasium wrappers
    such as `RecordVideo` work; `render_mode=None` (the default) renders nothing.
    Subclasses store each observation's image in `self._frame`.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 15}

    def __init__(self, seed: int | None, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise UserError(f"render_mode {render_mode!r} is not supported: use render_mode='rgb_array' or None")
        self._initial_seed = seed
        self.render_mode = render_mode
        self._frame: np.ndarray | None = None

    def render(self) -> np.ndarray | None:
        """The latest observation image (H, W, 3) uint8 when render_mode is 'rgb_array', else None."""
        if self.render_mode is None or self._frame is None:
            return None
        frame = self._frame
        return np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame.copy()

    def _take_seed(self, seed: int | None) -> int | None:
        """Return the seed this reset should use and forget the construction seed."""
        if seed is None:
            seed = self._initial_seed
        self._initial_seed = None
        return seed
