"""toy_catch: a tiny pixel game whose object size is a knob, for small-object studies.

A square object of `object_size` pixels falls from the top of a 64x64 RGB image at
`fall_speed` px per step, from a random column, optionally drifting sideways
(bouncing off the walls). A paddle on the bottom rows moves left / stays / moves
right (actions 0 / 1 / 2). When the object reaches the paddle's row it is caught
(+1, some horizontal overlap with the paddle) or missed (-1); the next object appears
at the top on the following step. After `drops` objects the episode terminates;
`time_limit` steps truncate it. Pure numpy: tens of thousands of steps per second.

Extras every step: `object_pos` float32 (2,) = (row, col) of the object's top-left
pixel; `object_box` int32 (4,) = (top, left, bottom, right), bottom/right exclusive;
`object_size` int32 (2,) = (height, width); `paddle_pos` float32 (2,) = (row, col) of
the paddle's top-left pixel.
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym
import numpy as np

from envs.base import SeededEnv
from envs.names import check_float, check_int, check_overrides, did_you_mean, option_names
from mwm.errors import UserError

NAME = "toy_catch"
IMAGE_SIZE = 64
MAX_OBJECT_SIZE = 16  # px, the largest object; the paddle leaves room above it for this one to land
BACKGROUND = (16, 16, 48)
OBJECT_COLOUR = (255, 96, 32)
PADDLE_COLOUR = (64, 224, 255)
LEFT, STAY, RIGHT = 0, 1, 2


def names() -> list[str]:
    """Every toy env name `envs.make` accepts."""
    return [NAME]


def make(name: str, seed: int | None, overrides: Mapping[str, object]) -> ToyCatch:
    """Build toy_catch with keyword `overrides`."""
    if name != NAME:
        raise UserError(f"unknown toy env {name!r}{did_you_mean(name, names())}; valid names: {NAME}")
    check_overrides("toy", overrides, option_names(ToyCatch, ("seed",)))
    return ToyCatch(seed=seed, **overrides)


class ToyCatch(SeededEnv):
    """Catch falling squares with a paddle; see the module docstring for the rules."""

    def __init__(
        self,
        seed: int | None = None,
        object_size: int = 4,
        paddle_width: int = 12,
        paddle_height: int = 2,
        paddle_speed: int = 4,
        fall_speed: float = 3.0,
        drift: float = 0.0,
        drops: int = 5,
        time_limit: int = 1000,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(seed, render_mode)
        self.object_size = check_int("object_size", object_size, 1, MAX_OBJECT_SIZE)
        self.paddle_width = check_int("paddle_width", paddle_width, 1, IMAGE_SIZE)
        self.paddle_height = check_int("paddle_height", paddle_height, 1, IMAGE_SIZE - MAX_OBJECT_SIZE)
        self.paddle_speed = check_int("paddle_speed", paddle_speed, 0, IMAGE_SIZE)
        self.fall_speed = check_float("fall_speed", fall_speed, 0.5, IMAGE_SIZE)
        self.drift = check_float("drift", drift, 0.0, IMAGE_SIZE)
        self.drops = check_int("drops", drops, 1)
        self.time_limit = check_int("time_limit", time_limit, 1)
        size = IMAGE_SIZE
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
            "object_pos": gym.spaces.Box(0, size, (2,), np.float32),
            "object_box": gym.spaces.Box(0, size, (4,), np.int32),
            "object_size": gym.spaces.Box(1, MAX_OBJECT_SIZE, (2,), np.int32),
            "paddle_pos": gym.spaces.Box(0, size, (2,), np.float32),
        })
        self.action_space = gym.spaces.Discrete(3)
        self._landing_row = size - self.paddle_height - self.object_size
        self._row = self._col = self._velocity = 0.0
        self._paddle = 0
        self._caught_drops = self._finished_drops = self._steps = 0
        self._spawn_next = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Centre the paddle and drop the first object."""
        super().reset(seed=self._take_seed(seed))
        self._paddle = (IMAGE_SIZE - self.paddle_width) // 2
        self._finished_drops = self._caught_drops = self._steps = 0
        self._spawn()
        return self._observe(), self._info()

    def step(self, action):
        """Move the paddle, then the object; resolve a catch or miss when it lands."""
        action = int(action)
        if action not in (LEFT, STAY, RIGHT):
            raise UserError(f"toy_catch actions are 0 (left), 1 (stay), 2 (right); got {action}")
        self._steps += 1
        self._paddle = int(np.clip(
            self._paddle + (action - STAY) * self.paddle_speed, 0, IMAGE_SIZE - self.paddle_width
        ))
        reward = 0.0
        if self._spawn_next:
            self._spawn()
        else:
            reward = self._fall()
        terminated = self._finished_drops >= self.drops
        truncated = not terminated and self._steps >= self.time_limit
        return self._observe(), reward, terminated, truncated, self._info()

    def _spawn(self) -> None:
        """Put a new object on the top row at a random column with a random drift."""
        self._row = 0.0
        self._col = float(self.np_random.integers(0, IMAGE_SIZE - self.object_size + 1))
        self._velocity = float(self.np_random.uniform(-self.drift, self.drift)) if self.drift else 0.0
        self._spawn_next = False

    def _fall(self) -> float:
        """Advance the object one step; return +1 / -1 when it lands, else 0."""
        right_wall = IMAGE_SIZE - self.object_size
        self._row = min(self._row + self.fall_speed, self._landing_row)
        self._col += self._velocity
        if self._col < 0:  # bounce off the left wall
            self._col, self._velocity = -self._col, -self._velocity
        elif self._col > right_wall:  # bounce off the right wall
            self._col, self._velocity = 2 * right_wall - self._col, -self._velocity
        self._col = min(max(self._col, 0.0), float(right_wall))
        if self._row < self._landing_row:
            return 0.0
        self._finished_drops += 1
        self._spawn_next = True
        _, left, _, right = self._box()
        caught = left < self._paddle + self.paddle_width and right > self._paddle
        self._caught_drops += int(caught)
        return 1.0 if caught else -1.0

    def _box(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the object in pixels, bottom/right exclusive."""
        top, left = int(round(self._row)), int(round(self._col))
        return top, left, top + self.object_size, left + self.object_size

    def _observe(self) -> dict[str, np.ndarray]:
        """Draw the frame and report the object and paddle positions."""
        top, left, bottom, right = box = self._box()
        paddle_row = IMAGE_SIZE - self.paddle_height
        image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)  # (H, W, C)
        image[:] = BACKGROUND
        image[paddle_row:, self._paddle:self._paddle + self.paddle_width] = PADDLE_COLOUR
        image[top:bottom, left:right] = OBJECT_COLOUR
        self._frame = image
        return {
            "image": image,
            "object_pos": np.array([top, left], np.float32),
            "object_box": np.array(box, np.int32),
            "object_size": np.array([self.object_size, self.object_size], np.int32),
            "paddle_pos": np.array([paddle_row, self._paddle], np.float32),
        }

    def _info(self) -> dict[str, int]:
        """Episode counters: drops finished and caught so far."""
        return {"drops": self._finished_drops, "caught": self._caught_drops}
