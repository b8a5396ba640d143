"""DeepMind Control Suite tasks as gymnasium envs rendering small RGB images.

One agent step = `action_repeat` physics control steps with the same action, rewards
summed. Actions are float32 in [-1, 1], rescaled to each task's action bounds.
Episodes end after `time_limit` control steps (1000, dm_control's standard length,
i.e. 500 agent steps at action repeat 2) as truncated, or earlier if the task itself
ends: terminated when its discount is 0, truncated otherwise.

`fast_render=True` lowers the shadow-map size and the offscreen multisampling before
the first render; on CPU (Mesa llvmpipe) this cuts the cost of a 64x64 frame roughly
threefold, which dominates the cost of a DMC step.

dm_control is imported only when a DMC env is made or listed, after `envs.gl` has
chosen a headless OpenGL backend.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import gymnasium as gym
import numpy as np

from envs.base import SeededEnv
from envs.gl import INSTALL_HINT, ensure_headless_gl
from envs.names import LIST_HINT, check_int, check_overrides, check_size, did_you_mean, option_names
from mwm.errors import UserError

PREFIX = "dmc_"
FAST_SHADOW_SIZE = 256  # MuJoCo's default is 4096
FAST_OFFSCREEN_SAMPLES = 0  # MuJoCo's default is 4 (multisample anti-aliasing)
UNBOUNDED = 1e6  # action bounds wider than this are passed through unscaled (e.g. lqr)
CAMERA_BY_DOMAIN = (("quadruped", 2),)  # default camera 0 otherwise


def _suite():
    """Import dm_control.suite after choosing the OpenGL backend."""
    ensure_headless_gl()
    from dm_control import suite

    return suite


def tasks() -> dict[str, tuple[str, str]]:
    """Map of env name -> (domain, task) for every task in dm_control.suite.ALL_TASKS."""
    return {f"{PREFIX}{domain}_{task}": (domain, task) for domain, task in _suite().ALL_TASKS}


def names() -> list[str]:
    """Every DMC env name `envs.make` accepts, e.g. 'dmc_walker_walk'."""
    return list(tasks())


def make(name: str, seed: int | None, overrides: Mapping[str, object]) -> DMC:
    """Build the DMC env called `name` ('dmc_<domain>_<task>') with keyword `overrides`."""
    known = tasks()
    if name not in known:
        raise UserError(f"unknown DMC task {name!r}{did_you_mean(name, known)}; {LIST_HINT.format(suite='dmc')}")
    check_overrides("dmc", overrides, option_names(DMC, ("domain", "task", "seed")))
    domain, task = known[name]
    return DMC(domain, task, seed=seed, **overrides)


def default_camera(domain: str) -> int:
    """The camera DreamerV2 renders a domain from: 2 for quadruped, else 0."""
    return dict(CAMERA_BY_DOMAIN).get(domain, 0)


def rescale_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map an action in [-1, 1] to [low, high] per dimension (clipping it first).

    Dimensions whose bounds are infinite or wider than UNBOUNDED pass through clipped.
    """
    action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
    bounded = np.isfinite(low) & np.isfinite(high) & (high - low <= UNBOUNDED)
    scaled = low + (action + 1.0) * 0.5 * (high - low)
    return np.where(bounded, scaled, action)


class DMC(SeededEnv):
    """One dm_control suite task; observations follow docs/ARCHITECTURE.md.

    Observation: dict with `image` uint8 (H, W, 3). Actions: Box[-1, 1] float32 (A,).
    """

    def __init__(
        self,
        domain: str,
        task: str,
        seed: int | None = None,
        size: tuple[int, int] = (64, 64),
        action_repeat: int = 2,
        camera: int | None = None,
        time_limit: int = 1000,
        fast_render: bool = True,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(seed, render_mode)
        self._size = check_size(size)
        self._action_repeat = check_int("action_repeat", action_repeat, 1)
        self._time_limit = check_int("time_limit", time_limit, 1)
        suite = _suite()
        # Our own counter enforces the time limit, so the task's is switched off.
        self._env = suite.load(domain, task, task_kwargs={"time_limit": float("inf")})
        physics = self._env.physics
        cameras = int(physics.model.ncam)
        camera = default_camera(domain) if camera is None else camera
        self.camera = check_int("camera", camera, -1, cameras - 1)  # -1: free camera
        if fast_render:
            quality = physics.model.vis.quality
            quality.shadowsize = min(int(quality.shadowsize), FAST_SHADOW_SIZE)
            quality.offsamples = min(int(quality.offsamples), FAST_OFFSCREEN_SAMPLES)
        spec = self._env.action_spec()
        self._low = np.asarray(spec.minimum, np.float64) * np.ones(spec.shape)
        self._high = np.asarray(spec.maximum, np.float64) * np.ones(spec.shape)
        self.domain, self.task = domain, task
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (*self._size, 3), np.uint8),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        self._env_steps = 0
        self._rendered = False

    @property
    def control_timestep(self) -> float:
        """Simulated seconds per env (control) step; an agent step is action_repeat of them."""
        return float(self._env.control_timestep())

    @property
    def physics(self):
        """The dm_control Physics of the task (for probes and tests)."""
        return self._env.physics

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; a seed reseeds the task's initial-state randomness."""
        seed = self._take_seed(seed)
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(int(self.np_random.integers(2**32)))
        self._env.reset()
        self._env_steps = 0
        return self._observe(), {}

    def step(self, action):
        """Apply `action` (in [-1, 1]) for `action_repeat` control steps, summing rewards."""
        action = np.asarray(action, np.float32)
        if action.shape != self.action_space.shape:
            raise UserError(
                f"action for {self.domain}_{self.task} must have shape "
                f"{self.action_space.shape}, got {action.shape}"
            )
        scaled = rescale_action(action, self._low, self._high)
        reward = 0.0
        for _ in range(self._action_repeat):
            time_step = self._env.step(scaled)
            reward += float(time_step.reward or 0.0)
            self._env_steps += 1
            if time_step.last() or self._env_steps >= self._time_limit:
                break
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = not terminated and (time_step.last() or self._env_steps >= self._time_limit)
        return self._observe(), reward, terminated, bool(truncated), {}

    def close(self) -> None:
        """Release the physics and its rendering contexts (the env is unusable afterwards)."""
        self._env.close()
        self._env.physics.free()

    def _observe(self) -> dict[str, np.ndarray]:
        """Render the current frame -> {'image': (H, W, 3) uint8}."""
        self._frame = self._render()
        return {"image": self._frame}

    def _render(self) -> np.ndarray:
        """Render from the chosen camera; the first render reports a missing GL as UserError."""
        height, width = self._size
        if self._rendered:
            return self._env.physics.render(height, width, camera_id=self.camera)
        try:
            image = self._env.physics.render(height, width, camera_id=self.camera)
        except Exception as error:  # the GL libraries fail in many ways
            backend = os.environ.get("MUJOCO_GL", "auto")
            raise UserError(
                f"MuJoCo could not render with MUJOCO_GL={backend} ({error}); {INSTALL_HINT}"
            ) from error
        self._rendered = True
        return image
