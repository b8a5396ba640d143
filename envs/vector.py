"""N copies of one env in worker processes, speaking the step protocol of docs/ARCHITECTURE.md.

Built on gymnasium's vector envs with autoreset mode NEXT_STEP: the step after an
episode's last step returns the first observation of the next episode, which we
report as `is_first=True`, `reward=0`, `is_last=False`.

Crashed workers: when a worker dies, raises, or a step or reset takes longer than
`timeout` seconds, all workers are shut down and started afresh, and the call returns
a reset batch (`is_first=True` for every env). The unfinished episodes end there
without an `is_last` step, so consumers must treat `is_first` as the start of a new
episode. After `max_restarts` consecutive failed attempts a UserError is raised.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import time

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from envs import make
from envs.names import check_int
from mwm.errors import UserError

LOGGER = logging.getLogger(__name__)


class VectorEnv:
    """`num_envs` copies of env `name`; env i is seeded with seed + i.

    parallel: run the envs in worker processes (AsyncVectorEnv, started with
        `context`, 'spawn' by default so that a parent holding CUDA or threads is
        safe); False, or num_envs == 1, steps them in this process (SyncVectorEnv).
    timeout: seconds a worker step or reset may take before it counts as crashed.
    max_restarts: consecutive worker restarts tolerated before raising UserError.
    seed_stride: after k restarts env i is seeded with seed + k * seed_stride + i; by default
        num_envs. Processes that split one seed range between them (torchrun ranks: rank r
        starts at seed + r * num_envs) pass num_envs times their number, so that a restart
        never repeats another process's seeds.
    overrides: passed to `envs.make` for every env.
    """

    def __init__(
        self,
        name: str,
        num_envs: int,
        seed: int | None = None,
        parallel: bool = True,
        timeout: float = 60.0,
        max_restarts: int = 3,
        context: str | None = "spawn",
        seed_stride: int | None = None,
        **overrides,
    ) -> None:
        self._name = name
        self._num_envs = check_int("num_envs", num_envs, 1)
        self._seed = seed
        self._seed_stride = self._num_envs if seed_stride is None else check_int("seed_stride", seed_stride, 1)
        self._parallel = bool(parallel) and self._num_envs > 1
        self._timeout = float(timeout)
        self._max_restarts = check_int("max_restarts", max_restarts, 0)
        self._context = context
        self._overrides = overrides
        self._env = self._build()
        self._started = False  # reset() ran since the workers were (re)built
        self._closed = False
        self._failures = 0
        self.restarts = 0
        self._after_last = np.zeros(self._num_envs, bool)  # (N,) previous step was is_last
        space = self._env.single_action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.action_size = int(space.n) if self.discrete else int(np.prod(space.shape))

    @property
    def num_envs(self) -> int:
        """N, the number of envs stepped together."""
        return self._num_envs

    @property
    def obs_space(self) -> gym.spaces.Dict:
        """The observation space of one env (a Dict with 'image' and extras)."""
        return self._env.single_observation_space

    @property
    def act_space(self) -> gym.spaces.Space:
        """The action space of one env (Discrete, or Box[-1, 1])."""
        return self._env.single_action_space

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env -> batch with is_first all True; the first call applies the seed."""
        self._check_open()
        try:
            return self._reset_batch()
        except Exception as error:
            if not self._parallel:
                raise
            return self._recover(error)

    def step(self, actions) -> dict[str, np.ndarray]:
        """Step every env with `actions` -> the batched step dict (leading axis N).

        actions: (N,) integer indices or (N, A) one-hot rows for discrete envs;
            (N, A) floats in [-1, 1] (clipped) for continuous ones.
        """
        self._check_open()
        if not self._started:
            raise UserError("VectorEnv.step() was called before reset(): call reset() first")
        actions = self._check_actions(actions)
        try:
            if self._parallel:
                self._env.step_async(actions)
                obs, reward, terminated, truncated, _ = self._env.step_wait(timeout=self._timeout)
            else:
                obs, reward, terminated, truncated, _ = self._env.step(actions)
        except Exception as error:
            if not self._parallel:
                raise
            return self._recover(error)
        self._failures = 0
        first = self._after_last  # (N,) these envs were just reset by autoreset
        done = np.logical_and(np.logical_or(terminated, truncated), ~first)
        batch = self._batch(
            obs,
            reward=np.where(first, 0.0, reward),
            is_first=first,
            is_last=done,
            is_terminal=np.logical_and(terminated, ~first),
        )
        self._after_last = done.copy()
        return batch

    def close(self) -> None:
        """Stop the workers; the VectorEnv cannot be used afterwards."""
        self._closed = True
        self._shutdown()

    def __enter__(self) -> VectorEnv:
        """Use as `with VectorEnv(...) as vector:` to close it on exit."""
        return self

    def __exit__(self, *exc_info) -> None:
        """Close on leaving the `with` block."""
        self.close()

    def _check_open(self) -> None:
        """Raise UserError when the VectorEnv was closed."""
        if self._closed:
            raise UserError(f"this VectorEnv for {self._name!r} was closed; make a new one")

    def _build(self) -> gym.vector.VectorEnv:
        """Start the gymnasium vector env (workers, or in-process copies)."""
        factory = functools.partial(make, self._name, **self._overrides)
        if not self._parallel:
            return SyncVectorEnv([factory] * self._num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)
        worker_factory = functools.partial(_make_in_worker, self._name, self._overrides, os.getpid())
        return AsyncVectorEnv(
            [worker_factory] * self._num_envs,
            shared_memory=True,
            context=self._context,
            autoreset_mode=AutoresetMode.NEXT_STEP,
        )

    def _reset_batch(self) -> dict[str, np.ndarray]:
        """Reset all envs (seeding on the first call and after a restart)."""
        seed = None
        if not self._started and self._seed is not None:
            seed = self._seed + self.restarts * self._seed_stride  # env i: seed + i (+ k stride after k restarts)
        if self._parallel:
            self._env.reset_async(seed=seed)
            obs, _ = self._env.reset_wait(timeout=self._timeout)
        else:
            obs, _ = self._env.reset(seed=seed)
        self._started = True
        self._after_last = np.zeros(self._num_envs, bool)
        zeros = np.zeros(self._num_envs, bool)
        return self._batch(
            obs, reward=np.zeros(self._num_envs), is_first=~zeros, is_last=zeros, is_terminal=zeros
        )

    def _batch(self, obs: dict, **protocol: np.ndarray) -> dict[str, np.ndarray]:
        """Join protocol fields and observation extras into one dict of (N, ...) arrays."""
        batch = {
            "image": obs["image"],  # (N, H, W, C)
            "reward": np.asarray(protocol["reward"], np.float32),  # (N,)
            "is_first": np.asarray(protocol["is_first"], bool),
            "is_last": np.asarray(protocol["is_last"], bool),
            "is_terminal": np.asarray(protocol["is_terminal"], bool),
        }
        for key, value in obs.items():
            if key not in batch:
                batch[key] = value
        return batch

    def _check_actions(self, actions) -> np.ndarray:
        """Validate the batch of actions and convert it to what the envs take."""
        actions = np.asarray(actions)
        n, size = self._num_envs, self.action_size
        if self.discrete:
            if actions.shape == (n, size):
                actions = actions.argmax(-1)  # one-hot (N, A) -> (N,)
            if actions.shape != (n,):
                raise UserError(
                    f"{self._name} takes actions of shape ({n},) (indices) or ({n}, {size}) "
                    f"(one-hot), got {actions.shape}"
                )
            return actions.astype(np.int64)
        if actions.shape != (n, size):
            raise UserError(f"{self._name} takes actions of shape ({n}, {size}), got {actions.shape}")
        return np.clip(actions.astype(np.float32), -1.0, 1.0)

    def _recover(self, error: Exception) -> dict[str, np.ndarray]:
        """Restart crashed workers and return a reset batch; UserError after too many tries."""
        while True:
            self._failures += 1
            self._shutdown(terminate=True)
            if self._failures > self._max_restarts:
                raise UserError(
                    f"env workers for {self._name!r} failed {self._failures} times in a row "
                    f"(last: {type(error).__name__}: {error}); run with parallel=False to see "
                    f"the full traceback"
                ) from error
            LOGGER.warning(
                "restarting env workers for %r after %s: %s", self._name, type(error).__name__, error
            )
            self.restarts += 1
            self._started = False
            try:
                self._env = self._build()
                return self._reset_batch()
            except Exception as next_error:  # keep trying up to max_restarts
                error = next_error

    def _shutdown(self, terminate: bool = False) -> None:
        """Close the vector env; with `terminate` (crashed or hung workers) kill its workers."""
        env = getattr(self, "_env", None)
        if env is None or env.closed:
            return
        if terminate and self._parallel:
            _kill_workers(env)
            return
        try:
            env.close()
        except Exception:  # a worker died while closing
            _kill_workers(env)


def _make_in_worker(name: str, overrides: dict, parent: int) -> gym.Env:
    """Build an env inside a worker process that leaves Ctrl-C to the main process and
    dies with it.

    A terminal's SIGINT reaches the whole process group; the trainer handles it (final
    checkpoint, then it closes the workers), so workers must not die on it first.
    gymnasium also calls this factory once in the parent itself (to read the spaces):
    there it must change nothing, or the trainer would ignore Ctrl-C too.
    A worker whose parent dies (kill -9, the out-of-memory killer) exits at once.
    """
    if os.getpid() != parent:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent(parent)
    return make(name, **overrides)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int, poll: float = 1.0) -> None:
    """Make this process exit when process ``parent`` does.

    On Linux the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG);
    everywhere a daemon thread also checks once per ``poll`` seconds that the parent is
    still ours (an orphan is re-parented, so its parent pid changes) and exits if not.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="mwm-parent-watchdog", daemon=True).start()


def _kill_workers(env: AsyncVectorEnv) -> None:
    """Kill every worker of `env` and release its pipes, without waiting on any of them.

    gymnasium's own `close(terminate=True)` first waits on a pending step and joins the
    workers without a timeout, which hangs on a stopped worker; this never blocks long.
    """
    for process in env.processes:
        if process.is_alive():
            process.kill()
        process.join(timeout=5)
    for pipe in env.parent_pipes:
        if pipe is not None:
            pipe.close()
    env.closed = True  # gymnasium's flag: nothing is left to close
