"""Atari 2600 games through ale-py, preprocessed the way DreamerV2 does it.

One agent step = `action_repeat` emulator frames with the same action; the image is
the pixel-wise max of the last two frames of that step (removes sprite flicker),
resized to `size` with area interpolation. Sticky actions happen inside the ALE
(`repeat_action_probability`), per frame. Up to `noops` random no-ops start each
episode. Losing a life ends the episode only when `life_done=True`. Episodes are
truncated after `time_limit` agent steps (27,000 = 108k frames by default).

ale-py is imported only when an Atari env is made or listed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import cv2
import gymnasium as gym
import numpy as np

from envs.base import SeededEnv
from envs.names import (
    LIST_HINT,
    check_float,
    check_int,
    check_overrides,
    check_size,
    did_you_mean,
    option_names,
)
from mwm.errors import UserError

PREFIX = "atari_"
RAM_SIZE = 128
NOOP_ACTION = 0  # the first action of every minimal action set is NOOP


def _ale():
    """Import ale_py and register its envs with gymnasium."""
    import ale_py

    gym.register_envs(ale_py)
    return ale_py


def games() -> list[str]:
    """Snake-case game names ale-py ships a ROM and a single-player `ALE/<Game>-v5` env for."""
    ale_py = _ale()
    from ale_py.registration import rom_id_to_name

    return [
        rom for rom in ale_py.roms.get_all_rom_ids()
        if f"ALE/{rom_id_to_name(rom)}-v5" in gym.registry
    ]


def names() -> list[str]:
    """Every Atari env name `envs.make` accepts, e.g. 'atari_pong'."""
    return [PREFIX + game for game in games()]


def game_id(game: str) -> str:
    """The gymnasium id of a snake-case game, e.g. 'ms_pacman' -> 'ALE/MsPacman-v5'."""
    valid = games()
    if game not in valid:
        raise UserError(
            f"unknown Atari game {game!r}{did_you_mean(game, valid)}; "
            f"valid games: {', '.join(valid)}"
        )
    from ale_py.registration import rom_id_to_name

    return f"ALE/{rom_id_to_name(game)}-v5"


def make(name: str, seed: int | None, overrides: Mapping[str, object]) -> Atari:
    """Build the Atari env called `name` ('atari_<game>') with keyword `overrides`."""
    valid = names()
    if name not in valid:  # suggest what the user can type: atari_pongg -> atari_pong
        raise UserError(f"unknown Atari game {name!r}{did_you_mean(name, valid)}; "
                        f"{LIST_HINT.format(suite='atari')}")
    check_overrides("atari", overrides, option_names(Atari, ("game", "seed")))
    return Atari(name[len(PREFIX):], seed=seed, **overrides)


def max_pool_last_two(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Pixel-wise max of the last two frames (the only frame when there is one).

    frames: raw screens in the order the emulator produced them, each (h, w[, c]).
    """
    if len(frames) == 0:
        raise ValueError("max_pool_last_two needs at least one frame")
    if len(frames) == 1:
        return frames[-1]
    return np.maximum(frames[-2], frames[-1])


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a raw screen to `size` (height, width) with area interpolation -> (H, W, C)."""
    height, width = size
    if frame.shape[:2] != (height, width):
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    if frame.ndim == 2:
        frame = frame[:, :, None]  # (H, W) -> (H, W, 1)
    return frame


class Atari(SeededEnv):
    """One Atari game with DreamerV2's preprocessing; observations follow docs/ARCHITECTURE.md.

    Observation: dict with `image` uint8 (H, W, C) (C=3, or 1 when grayscale) and
    `ram` uint8 (128,), the console RAM after the step. Actions: Discrete over the
    game's minimal action set (`get_action_meanings()` names them).
    """

    def __init__(
        self,
        game: str,
        seed: int | None = None,
        size: tuple[int, int] = (64, 64),
        grayscale: bool = False,
        action_repeat: int = 4,
        sticky: float = 0.25,
        noops: int = 30,
        life_done: bool = False,
        time_limit: int = 27000,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(seed, render_mode)
        self._size = check_size(size)
        self._grayscale = bool(grayscale)
        self._action_repeat = check_int("action_repeat", action_repeat, 1)
        self._noops = check_int("noops", noops, 0)
        self._life_done = bool(life_done)
        self._time_limit = check_int("time_limit", time_limit, 1)
        sticky = check_float("sticky", sticky, 0.0, 1.0)
        env_id = game_id(game)
        self._env = gym.make(
            env_id,
            obs_type="grayscale" if self._grayscale else "rgb",
            frameskip=1,
            repeat_action_probability=sticky,
            full_action_space=False,
            max_num_frames_per_episode=None,  # our own time limit, in agent steps
        )
        self.game = game
        channels = 1 if self._grayscale else 3
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (*self._size, channels), np.uint8),
            "ram": gym.spaces.Box(0, 255, (RAM_SIZE,), np.uint8),
        })
        self.action_space = gym.spaces.Discrete(int(self._env.action_space.n))
        self._steps = 0
        self._lives = 0

    @property
    def ale(self):
        """The underlying `ale_py.ALEInterface` (RAM, frame counters, settings)."""
        return self._env.unwrapped.ale

    def get_action_meanings(self) -> list[str]:
        """Names of the discrete actions, e.g. ['NOOP', 'FIRE', 'RIGHT', ...]."""
        return self._env.unwrapped.get_action_meanings()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode: reset the game, then play 1..noops random no-ops."""
        seed = self._take_seed(seed)
        super().reset(seed=seed)
        ale_seed = None if seed is None else int(self.np_random.integers(2**31 - 1))
        raw, info = self._env.reset(seed=ale_seed)
        count = int(self.np_random.integers(1, self._noops + 1)) if self._noops else 0
        for _ in range(count):
            raw, _, game_over, truncated, info = self._env.step(NOOP_ACTION)
            if game_over or truncated:
                raw, info = self._env.reset()
        self._steps = 0
        self._lives = int(info["lives"])
        return self._observe(raw), dict(info)

    def step(self, action):
        """Repeat `action` for `action_repeat` frames (fewer if the game ends)."""
        frames: deque[np.ndarray] = deque(maxlen=2)
        reward = 0.0
        game_over = ale_truncated = False
        info: dict = {}
        for _ in range(self._action_repeat):
            raw, frame_reward, game_over, ale_truncated, info = self._env.step(action)
            frames.append(raw)
            reward += float(frame_reward)
            if game_over or ale_truncated:
                break
        self._steps += 1
        lives = int(info["lives"])
        life_lost = lives < self._lives
        self._lives = lives
        terminated = bool(game_over or (self._life_done and life_lost))
        truncated = not terminated and (ale_truncated or self._steps >= self._time_limit)
        return self._observe(max_pool_last_two(frames)), reward, terminated, bool(truncated), dict(info)

    def close(self) -> None:
        """Release the emulator."""
        self._env.close()

    def _observe(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Build the observation dict from a (pooled) raw screen and the current RAM."""
        self._frame = np.ascontiguousarray(resize_frame(raw, self._size), dtype=np.uint8)
        return {
            "image": self._frame,
            "ram": np.array(self.ale.getRAM(), dtype=np.uint8),
        }
