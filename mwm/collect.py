"""Runs a policy in the vector env and feeds the replay: the envs -> replay edge."""

from __future__ import annotations

from collections import deque
from typing import Callable, Dict, List, Optional

import numpy as np
import torch


EPISODE_KEYS = ("image", "reward", "is_first", "is_last", "is_terminal")  # kept of eval episodes


def random_actions(act_space, n: int, rng: np.random.Generator) -> np.ndarray:
    """(N, A) float32 actions: one-hot uniform for discrete spaces, uniform [-1, 1] otherwise."""
    if hasattr(act_space, "n"):
        return np.eye(int(act_space.n), dtype=np.float32)[rng.integers(0, act_space.n, size=n)]
    return rng.uniform(-1.0, 1.0, size=(n,) + tuple(act_space.shape)).astype(np.float32)


def to_env_actions(actions: np.ndarray, discrete: bool) -> np.ndarray:
    """Agent actions (N, A) -> what the envs take: indices (N,) or floats (N, A)."""
    return actions.argmax(-1) if discrete else np.clip(actions, -1.0, 1.0)


def to_tensors(obs: Dict[str, np.ndarray], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in obs.items()
            if np.asarray(v).dtype != object}


class Collector:
    """Steps N envs with a policy; every step goes to replay with the action that led to it.

    ``episodes`` counts finished episodes, starting from ``episodes`` (a resumed run's count);
    ``recent_returns`` holds the returns of the last ``RECENT`` of them (this process's).
    """

    RECENT = 10

    def __init__(self, env, replay, agent, episodes: int = 0):
        self.env, self.replay, self.agent = env, replay, agent
        self.discrete = env.discrete
        self.action_size = env.action_size
        self.state = None
        self.episodes = int(episodes)
        self.last_return: Optional[float] = None
        self.recent_returns: deque = deque(maxlen=self.RECENT)
        self._returns = np.zeros(env.num_envs)
        self._lengths = np.zeros(env.num_envs, dtype=np.int64)
        self._finished: List[tuple] = []
        self.eval_episodes: List[Dict[str, np.ndarray]] = []  # the last evaluation's, see evaluate()
        self.obs = env.reset()
        self._store(self.obs, np.zeros((env.num_envs, self.action_size), np.float32))

    def agent_policy(self, obs: Dict[str, np.ndarray], mode: str, state_attr: str = "state") -> np.ndarray:
        with torch.no_grad():
            action, state = self.agent.policy(to_tensors(obs, self.agent.device), getattr(self, state_attr), mode)
        setattr(self, state_attr, state)
        return action.float().cpu().numpy()

    def step(self, policy: Callable[[Dict[str, np.ndarray]], np.ndarray]) -> Dict[str, np.ndarray]:
        actions = policy(self.obs)  # (N, A)
        obs = self.env.step(to_env_actions(actions, self.discrete))
        actions = np.where(obs["is_first"][:, None], 0.0, actions).astype(np.float32)
        self._store(obs, actions)
        self.obs = obs
        return obs

    def _store(self, obs: Dict[str, np.ndarray], actions: np.ndarray) -> None:
        for i in range(self.env.num_envs):
            step = {k: v[i] for k, v in obs.items()}
            step["action"] = actions[i]
            self.replay.add(step, worker=i)
            if obs["is_first"][i]:
                self._returns[i], self._lengths[i] = 0.0, 0
            else:
                self._returns[i] += float(obs["reward"][i])
                self._lengths[i] += 1
            if obs["is_last"][i]:
                self.episodes += 1
                self.last_return = float(self._returns[i])
                self.recent_returns.append(self.last_return)
                self._finished.append((self._returns[i], self._lengths[i]))

    def pop_episode_stats(self) -> Dict[str, float]:
        """Mean return and length of the episodes finished since the last call."""
        if not self._finished:
            return {}
        returns, lengths = zip(*self._finished)
        self._finished = []
        return {"train/return": float(np.mean(returns)), "train/length": float(np.mean(lengths)),
                "train/episodes": float(self.episodes)}

    def evaluate(self, eval_env, episodes: int) -> float:
        """Mean return of ``episodes`` episodes with the agent's evaluation policy.

        The episodes are kept in ``eval_episodes`` (until the next evaluation): held-out
        sequences for the world-model diagnostics, never added to replay.
        """
        returns, total = [], 0.0
        obs, self.eval_state = eval_env.reset(), None
        self.eval_episodes, steps = [], []
        action = np.zeros((1, self.action_size), np.float32)
        while len(returns) < episodes:
            if not obs["is_first"][0]:
                total += float(obs["reward"][0])
            steps.append({key: np.asarray(obs[key][0]) for key in EPISODE_KEYS} | {"action": action[0]})
            if obs["is_last"][0]:
                returns.append(total)
                self.eval_episodes.append({key: np.stack([s[key] for s in steps]) for key in steps[0]})
            if len(returns) == episodes:
                break
            actions = self.agent_policy(obs, mode="eval", state_attr="eval_state")
            obs = eval_env.step(to_env_actions(actions, self.discrete))
            if obs["is_first"][0]:
                total, steps = 0.0, []
                action = np.zeros((1, self.action_size), np.float32)
            else:
                action = actions.astype(np.float32)
        return float(np.mean(returns))

    def film(self, env, max_frames: int) -> np.ndarray:
        """One episode of the evaluation policy in the one-env ``env`` as frames (T, H, W, C) uint8,
        the first frame and every step's, at most ``max_frames``."""
        obs, self.video_state = env.reset(), None
        frames = [obs["image"][0]]
        while len(frames) < max_frames and not obs["is_last"][0]:
            actions = self.agent_policy(obs, mode="eval", state_attr="video_state")
            obs = env.step(to_env_actions(actions, self.discrete))
            frames.append(obs["image"][0])
        return np.stack(frames)

    def close(self) -> None:
        self.state = None
