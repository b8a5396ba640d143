"""Where the probes' frames come from: an env under a random or trained policy, or the
replay of an existing training run.

Every source returns episodes as dicts of (T, ...) numpy arrays holding ``image``,
``reward`` and the env's extras (``ram`` for Atari; ``object_box``, ``object_pos``,
``paddle_pos`` for toy_catch), which :func:`mwm.probes.annotations.labels_for` turns
into labels.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import gymnasium as gym
import numpy as np
import torch

from mwm.errors import UserError

Episode = Dict[str, np.ndarray]
Policy = Callable[[Mapping[str, np.ndarray], bool], object]  # (obs, is_first) -> env action


class RandomPolicy:
    """Uniform random actions from the env's action space, from its own seeded generator."""

    def __init__(self, space: gym.Space, seed: int):
        self.space = space
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: Mapping[str, np.ndarray], is_first: bool):
        if isinstance(self.space, gym.spaces.Discrete):
            return int(self.rng.integers(self.space.n))
        return self.rng.uniform(-1.0, 1.0, size=self.space.shape).astype(np.float32)


class AgentPolicy:
    """The eval-mode policy of a trained run, read from ``<run>/config.yaml`` and its newest
    checkpoint in ``<run>/checkpoints``."""

    def __init__(self, run_dir: str, env: gym.Env, device: torch.device):
        from agents import make_agent
        from mwm import config as config_lib
        from mwm.checkpoint import load_latest

        path = Path(run_dir).expanduser()
        if not (path / "config.yaml").is_file():
            raise UserError(f"probe.policy '{run_dir}' is not a run directory (no config.yaml): "
                            "pass the --logdir of a mwm.train run, or leave probe.policy empty for random actions")
        cfg = config_lib.load(path / "config.yaml")
        state, _ = load_latest(str(path / "checkpoints"))
        if state is None:
            raise UserError(f"probe.policy '{run_dir}' has no checkpoint in checkpoints/: train it first "
                            "or leave probe.policy empty for random actions")
        self.agent = make_agent(cfg, env.observation_space, env.action_space, device)
        self.agent.load_state_dict(state["agent"])
        self.agent.eval()
        self.device = device
        self.discrete = isinstance(env.action_space, gym.spaces.Discrete)
        self.state = None

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, np.ndarray], is_first: bool):
        batch = {k: torch.as_tensor(np.asarray(v)[None]).to(self.device) for k, v in obs.items()}  # (1, ...)
        batch["is_first"] = torch.tensor([is_first], device=self.device)
        action, self.state = self.agent.policy(batch, None if is_first else self.state, "eval")
        action = action[0].float().cpu().numpy()  # (A,)
        return int(action.argmax()) if self.discrete else np.clip(action, -1.0, 1.0)


def agent_action(space: gym.Space, action) -> np.ndarray:
    """An env action as the agents store it: one-hot (A,) for discrete spaces, else (A,) floats."""
    if isinstance(space, gym.spaces.Discrete):
        return np.eye(int(space.n), dtype=np.float32)[int(action)]
    return np.asarray(action, np.float32).reshape(-1)


def run_episode(env: gym.Env, policy: Policy, max_steps: int) -> Episode:
    """One episode of at most ``max_steps`` agent steps (plus the reset frame), laid out as
    replay stores it: each step's ``action`` is the one that led to it (zeros at the reset
    frame), with ``is_first`` and ``is_terminal`` flags."""
    obs, _ = env.reset()
    no_action = np.zeros_like(agent_action(env.action_space, env.action_space.sample()))
    steps: List[Dict[str, np.ndarray]] = [
        dict(obs, reward=np.float32(0.0), action=no_action, is_first=True, is_terminal=False)]
    for _ in range(max_steps):
        action = policy(obs, len(steps) == 1)
        obs, reward, terminated, truncated, _ = env.step(action)
        steps.append(dict(obs, reward=np.float32(reward), action=agent_action(env.action_space, action),
                          is_first=False, is_terminal=bool(terminated)))
        if terminated or truncated:
            break
    return {key: np.stack([step[key] for step in steps]) for key in steps[0]}


def collect_episodes(env_name: str, env_kwargs: Mapping[str, object], episodes: int, max_steps: int, seed: int,
                     policy_dir: str = "", device: Optional[torch.device] = None) -> List[Episode]:
    """``episodes`` episodes of ``env_name`` under a random policy, or the trained policy of
    the run in ``policy_dir``."""
    import envs

    env = envs.make(env_name, seed=seed, **env_kwargs)
    try:
        if policy_dir:
            policy: Policy = AgentPolicy(policy_dir, env, device or torch.device("cpu"))
        else:
            policy = RandomPolicy(env.action_space, seed)
        return [run_episode(env, policy, max_steps) for _ in range(episodes)]
    finally:
        env.close()


def replay_folder(path: str) -> Path:
    """The episode folder of a run directory (``<run>/replay``) or the folder itself."""
    folder = Path(path).expanduser()
    if (folder / "replay").is_dir():
        folder = folder / "replay"
    if not folder.is_dir() or not any(folder.glob("*.npz")):
        raise UserError(f"probe.replay '{path}' holds no episode files (*.npz): pass a run directory "
                        "of mwm.train or its replay/ folder")
    return folder


def replay_episodes(path: str, episodes: int) -> List[Episode]:
    """The newest ``episodes`` readable episode files of a run's replay, oldest first.

    Only those files are read (a training run's replay can be far larger than RAM);
    unreadable files are skipped with a warning, as :meth:`replay.Replay.load` does.
    """
    from replay.episodes import EpisodeFileError, list_episode_files, load_episode

    found: List[Episode] = []
    for file in reversed(list_episode_files(str(replay_folder(path)))):  # newest first
        if len(found) == episodes:
            break
        try:
            found.append(load_episode(file.path, expected_length=file.length))
        except EpisodeFileError as error:
            warnings.warn(f"skipping episode file {file.path}: {error}", stacklevel=2)
    if len(found) < episodes:
        raise UserError(f"probe.replay '{path}' holds {len(found)} readable episodes but the probe needs "
                        f"{episodes} (probe.train_episodes + probe.eval_episodes): lower them or train longer")
    return found[::-1]
