"""The interface every agent implements; the training loop knows nothing else."""

from __future__ import annotations

import abc
from typing import Any, Dict, Tuple

import torch
from torch import nn

Metrics = Dict[str, Any]


class Agent(nn.Module, abc.ABC):
    """An agent owns its networks and optimisers and samples its own training data.

    Contract (docs/ARCHITECTURE.md):
    - ``policy(obs, state, mode)``: ``obs`` is the batched step dict (N, ...) as tensors on
      ``self.device`` (images uint8); returns actions (N, A) as a float tensor (one-hot
      for discrete action spaces, [-1, 1] for continuous) and the new recurrent state
      (``state=None`` starts fresh; ``obs['is_first']`` resets single envs).
      ``mode`` is ``"train"`` (explore) or ``"eval"``.
    - ``update(replay)``: one scheduled update; returns a dict of scalar tensors (no host
      synchronisation needed to produce it).
    - ``pretrain(replay, updates)``: warm-up updates before the first policy step.
    - ``report(replay)``: images and videos for TensorBoard (uint8 arrays).
    - ``diagnostics(episodes, replay)``: scalars for TensorBoard (Dreamer family: the
      open-loop world-model scores of :mod:`mwm.diagnostics`).
    - ``close()``: stop background threads (prefetching samplers); the agent may be
      used again afterwards (samplers restart on demand).
    - ``state_dict()`` / ``load_state_dict()`` include optimiser states and counters.
    """

    def __init__(self, cfg, obs_space, act_space, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.obs_space = obs_space
        self.act_space = act_space
        self.device = device

    @abc.abstractmethod
    def policy(self, obs: Dict[str, torch.Tensor], state: Any, mode: str = "train") -> Tuple[torch.Tensor, Any]:
        """Actions (N, A) for a batch of steps, and the next recurrent state."""

    @abc.abstractmethod
    def update(self, replay) -> Metrics:
        """One scheduled training update; metrics as scalar tensors."""

    def pretrain(self, replay, updates: int) -> Metrics:
        """Warm-up before the first policy step; by default ``updates`` ordinary updates."""
        metrics: Metrics = {}
        for _ in range(updates):
            metrics = self.update(replay)
        return metrics

    def report(self, replay) -> Dict[str, Any]:
        """Images (H, W, C) and videos (T, H, W, C) as uint8 arrays; none by default."""
        return {}

    def diagnostics(self, episodes, replay) -> Dict[str, float]:
        """Scalars that judge the agent's model on held-out ``episodes`` (a list of dicts of
        (T, ...) arrays), or on ``replay`` where there are none; none by default."""
        return {}

    def close(self) -> None:
        """Release background resources (prefetch threads); nothing by default."""
