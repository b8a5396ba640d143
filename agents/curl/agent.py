"""The CURL agent (``--agent curl``): Rainbow for discrete actions, SAC for continuous ones.

The agent keeps a frame stack per env as its policy state, samples n-step transitions
from the replay's RAM episodes (:class:`replay.transitions.TransitionSampler`), and
hands them to its learner (:mod:`agents.curl.rainbow_learner` or
:mod:`agents.curl.sac_learner`). See agents/curl/README.md.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from agents.base import Agent, Metrics
from agents.curl.augment import augment
from agents.curl.checks import check_atari100k, check_settings
from agents.curl.frames import push_frame, to_channels
from agents.curl.rainbow_learner import RainbowLearner
from agents.curl.sac_learner import SacLearner
from mwm.config import construct, suite_of
from replay.transitions import TransitionSampler


def annealed_beta(start: float, updates: int, anneal_updates: int) -> float:
    """Importance-sampling exponent, linear from ``start`` to 1 over ``anneal_updates`` (Rainbow)."""
    return min(1.0, start + (1.0 - start) * updates / max(1, anneal_updates))


class CurlAgent(Agent):
    """CURL (Laskin et al., 2020) behind :class:`agents.base.Agent`; reads ``cfg.curl``, ``cfg.env``, ``cfg.run``.

    The policy state is the (N, k, H, W, C) uint8 stack of each env's last k frames.
    """

    def __init__(self, cfg, obs_space, act_space, device: torch.device):
        super().__init__(cfg, obs_space, act_space, device)
        c, run = cfg.curl, cfg.run
        height, width, colors = obs_space["image"].shape
        crop = check_settings(c, (height, width, colors))
        if c.atari100k and suite_of(run.env) == "atari":
            check_atari100k(cfg.env, run.steps)
        self.discrete = hasattr(act_space, "n")
        self.action_size = int(act_space.n) if self.discrete else int(np.prod(act_space.shape))
        self.history, self.batch_size = c.history, c.batch
        self.capacity, self.seed = cfg.replay.capacity, run.seed
        self.n_step, self.discount, self.reward_clip = c.n_step, c.discount, c.reward_clip
        self.prioritized, self.priority_exponent = c.prioritized, c.priority_exponent
        self.beta_start = c.priority_beta
        self.anneal_updates = (run.steps - run.prefill) // run.train_every * run.train_steps
        self.pad, self.crop = c.pad, crop
        # Every learner argument not given here is the curl key of the same name.
        given = dict(in_channels=c.history * colors, crop=crop, device=device,
                     fused=bool(cfg.speed.fused_optim) and device.type == "cuda")
        if self.discrete:
            self.learner = construct(RainbowLearner, c, image_size=crop, num_actions=self.action_size, **given)
        else:
            self.learner = construct(SacLearner, c, action_dim=self.action_size, **given)
        self._sampler: Optional[TransitionSampler] = None

    # ------------------------------------------------------------------ acting

    @torch.no_grad()
    def policy(self, obs: Dict[str, torch.Tensor], state: Any, mode: str = "train") -> Tuple[torch.Tensor, Any]:
        """One-hot (N, A) actions (discrete) or (N, A) in [-1, 1]; ``state`` is the frame stack."""
        if mode not in ("train", "eval"):
            raise ValueError(f"policy mode must be 'train' or 'eval', got {mode!r}")
        frames = push_frame(state, obs["image"], obs["is_first"], self.history)  # (N, k, H, W, C)
        images = to_channels(frames).float()  # (N, k*C, H, W)
        actions = self.learner.act(images, explore=mode == "train")
        if self.discrete:
            actions = F.one_hot(actions, self.action_size).float()  # (N, A)
        return actions, frames

    # ------------------------------------------------------------------ learning

    def sampler(self, replay) -> TransitionSampler:
        """The transition sampler over ``replay`` (made on first use; priorities start afresh)."""
        if self._sampler is None or self._sampler.replay is not replay:
            self._sampler = TransitionSampler(replay, self.capacity, self.history, self.n_step, self.discount,
                                              self.prioritized, self.priority_exponent, self.reward_clip,
                                              seed=self.seed)
        return self._sampler

    def _to_device(self, batch: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
        def move(array, dtype=None):
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype=dtype)

        action = batch["action"].argmax(-1) if self.discrete else batch["action"]
        return {"obs": to_channels(move(batch["obs"])).float(),  # (B, k*C, H, W)
                "next_obs": to_channels(move(batch["next_obs"])).float(),
                "action": move(action, torch.int64 if self.discrete else torch.float32),
                "reward": move(batch["reward"], torch.float32), "discount": move(batch["discount"], torch.float32),
                "weight": move(batch["weight"], torch.float32)}

    def update(self, replay) -> Metrics:
        """Sample a batch, update the learner, write back the priorities."""
        sampler = self.sampler(replay)
        beta = annealed_beta(self.beta_start, self.learner.updates, self.anneal_updates)
        batch = sampler.sample(self.batch_size, beta)
        metrics, priorities = self.learner.update(self._to_device(batch))
        sampler.update_priorities(batch["index"], batch["serial"], priorities.float().cpu().numpy())
        metrics["rl/priority_beta"] = torch.tensor(beta)
        return metrics

    def report(self, replay) -> Dict[str, Any]:
        """The two augmented views CURL contrasts, of one replay observation (latest frame), side by side."""
        batch = self.sampler(replay).sample(1)
        images = to_channels(torch.from_numpy(batch["obs"])).float()  # (1, k*C, H, W)
        colors = batch["obs"].shape[-1]
        views = [augment(images, self.pad, self.crop)[0, -colors:] for _ in range(2)]  # 2 x (C, S, S)
        pair = torch.cat(views, dim=-1).permute(1, 2, 0)  # (S, 2S, C)
        return {"curl/augmented_pair": pair.round().clamp(0, 255).to(torch.uint8).numpy()}
