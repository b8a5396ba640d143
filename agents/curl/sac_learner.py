"""CURL for continuous actions: SAC on pixels with the contrastive loss (CURL's DMC code).

One update, on a batch of 100x100 frame stacks:

1. Three independent random 84x84 crops: the anchor (which the RL losses also use),
   the positive, and the next observation.
2. Critic: soft Bellman target from the target critic and a fresh next action; both
   Q heads and the critic's encoder (conv trunk included) are trained.
3. Every ``actor_every`` updates: actor (the shared conv trunk under stop-gradient) and
   temperature (target entropy -|A|).
4. Every ``target_every`` updates: target Q heads EMA (tau 0.01) and target encoder EMA
   (tau 0.05); the target encoder is CURL's key encoder.
5. Contrastive: queries from the critic's encoder on the anchor, keys from the target
   encoder on the positive; bilinear InfoNCE trains the critic's encoder and W.
"""

from __future__ import annotations

import copy
import math
from itertools import chain
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from agents.curl.augment import augment, center_crop
from agents.curl.contrastive import BilinearSimilarity, ema_update
from agents.curl.encoder import ConvEncoder, sac_init
from agents.curl.losses import (contrastive_logits, info_nce_loss, sac_actor_loss, sac_critic_loss,
                                sac_critic_target, sac_temperature_loss)
from agents.curl.sac import Actor, Critic, PixelEncoder, squashed_gaussian_sample
from mwm.optim import Optimizer


def _with_beta1(optimizer: Optimizer, beta1: float) -> Optimizer:
    """Set Adam's first-moment decay (CURL: 0.9 for actor and critic, 0.5 for the temperature)."""
    for group in optimizer.adam.param_groups:
        group["betas"] = (beta1, group["betas"][1])
    return optimizer


class SacLearner(nn.Module):
    """Actor, critic, target critic, temperature and bilinear W of CURL-SAC, with their optimisers.

    Batches are dicts of tensors on the learner's device: ``obs``, ``next_obs`` (B, k*C,
    H, W) float pixels (uncropped renders), ``action`` (B, A) in [-1, 1], ``reward`` (B,),
    ``discount`` (B,) gamma or 0, ``weight`` (B,) importance weights.
    """

    def __init__(self, in_channels: int, action_dim: int, *, channels: Sequence[int], kernels: Sequence[int],
                 strides: Sequence[int], feature_dim: int, hidden: int, log_std_min: float, log_std_max: float,
                 init_temperature: float, pad: int, crop: int, actor_lr: float, critic_lr: float,
                 encoder_lr: float, alpha_lr: float, actor_beta: float, critic_beta: float, alpha_beta: float,
                 eps: float, clip: float, critic_tau: float, key_tau: float, actor_every: int,
                 target_every: int, aux_weight: float, logit_scale: float, device: torch.device,
                 fused: bool = False):
        super().__init__()
        self.pad, self.crop = pad, crop
        self.critic_tau, self.key_tau = critic_tau, key_tau
        self.actor_every, self.target_every = actor_every, target_every
        self.aux_weight, self.logit_scale = aux_weight, logit_scale
        self.target_entropy = -float(action_dim)
        trunk = ConvEncoder(in_channels, crop, channels, kernels, strides)
        self.critic = Critic(PixelEncoder(trunk, feature_dim), action_dim, hidden)
        self.actor = Actor(PixelEncoder(trunk, feature_dim), action_dim, hidden, log_std_min, log_std_max)
        self.critic.apply(sac_init)
        self.actor.apply(sac_init)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.similarity = BilinearSimilarity(feature_dim)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.to(device)
        own = dict(eps=eps, clip=clip, wd=0.0, fused=fused)
        self.critic_opt = _with_beta1(Optimizer("critic", self.critic.parameters(), lr=critic_lr, **own),
                                      critic_beta)
        actor_params = chain(self.actor.encoder.fc.parameters(), self.actor.encoder.norm.parameters(),
                             self.actor.trunk.parameters())  # the shared conv trunk is the critic's
        self.actor_opt = _with_beta1(Optimizer("actor", actor_params, lr=actor_lr, **own), actor_beta)
        self.alpha_opt = _with_beta1(Optimizer("alpha", [self.log_alpha], lr=alpha_lr, **own), alpha_beta)
        self.curl_opt = Optimizer("curl", chain(self.critic.encoder.parameters(), self.similarity.parameters()),
                                  lr=encoder_lr, **own)
        self.updates = 0
        self._actor_metrics: Dict[str, torch.Tensor] = {}

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    @torch.no_grad()
    def act(self, images: torch.Tensor, explore: bool) -> torch.Tensor:
        """Actions (N, A) in [-1, 1] from centre crops: sampled when exploring, tanh(mean) otherwise."""
        mu, log_std = self.actor(center_crop(images, self.crop))
        return squashed_gaussian_sample(mu, log_std)[0] if explore else torch.tanh(mu)

    def _update_critic(self, anchor, next_obs, batch) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            next_action, next_log_pi = squashed_gaussian_sample(*self.actor(next_obs))
            next_q1, next_q2 = self.critic_target(next_obs, next_action)
            target = sac_critic_target(batch["reward"], batch["discount"], next_q1, next_q2, next_log_pi,
                                       self.alpha.detach())
        q1, q2 = self.critic(anchor, batch["action"])
        per_sample = sac_critic_loss(q1, q2, target)  # (B,)
        loss = (batch["weight"] * per_sample).mean()  # weights are 1 unless curl.prioritized
        metrics = self.critic_opt.step(loss)
        metrics.update({"rl/loss": loss.detach(), "rl/q_mean": torch.min(q1, q2).mean().detach(),
                        "rl/target_mean": target.mean(),
                        "critic/nonfinite": self.critic_opt.nonfinite_in_row.float()})
        return metrics, per_sample.detach()

    def _update_actor_and_alpha(self, anchor) -> Dict[str, torch.Tensor]:
        action, log_pi = squashed_gaussian_sample(*self.actor(anchor, detach_trunk=True))
        q1, q2 = self.critic(anchor, action, detach_trunk=True)
        metrics = self.actor_opt.step(sac_actor_loss(log_pi, q1, q2, self.alpha).mean())
        alpha_loss = sac_temperature_loss(self.log_alpha, log_pi.detach(), self.target_entropy).mean()
        metrics.update(self.alpha_opt.step(alpha_loss))
        metrics.update({"rl/entropy": -log_pi.mean().detach(), "rl/alpha": self.alpha.detach(),
                        "actor/nonfinite": self.actor_opt.nonfinite_in_row.float(),
                        "alpha/nonfinite": self.alpha_opt.nonfinite_in_row.float()})
        return metrics

    def _update_targets(self) -> None:
        ema_update(self.critic_target.q1.parameters(), self.critic.q1.parameters(), self.critic_tau)
        ema_update(self.critic_target.q2.parameters(), self.critic.q2.parameters(), self.critic_tau)
        ema_update(self.critic_target.encoder.parameters(), self.critic.encoder.parameters(), self.key_tau)

    def _update_contrastive(self, anchor, positive) -> Dict[str, torch.Tensor]:
        queries = self.critic.encoder(anchor)  # (B, feature_dim)
        with torch.no_grad():
            keys = self.critic_target.encoder(positive)  # (B, feature_dim)
        logits = contrastive_logits(queries, keys, self.similarity.weight, self.logit_scale)  # (B, B)
        loss = info_nce_loss(logits).mean()
        metrics = self.curl_opt.step(self.aux_weight * loss)
        labels = torch.arange(len(logits), device=logits.device)
        metrics.update({"curl/contrastive_loss": loss.detach(),
                        "curl/accuracy": (logits.argmax(1) == labels).float().mean(),
                        "curl/nonfinite": self.curl_opt.nonfinite_in_row.float()})
        return metrics

    def update(self, batch: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """One update; returns scalar metrics and the per-sample critic losses (B,) (priorities if enabled)."""
        anchor = augment(batch["obs"], self.pad, self.crop)  # (B, k*C, crop, crop)
        positive = augment(batch["obs"], self.pad, self.crop)
        next_obs = augment(batch["next_obs"], self.pad, self.crop)
        metrics, critic_losses = self._update_critic(anchor, next_obs, batch)
        if self.updates % self.actor_every == 0:
            self._actor_metrics = self._update_actor_and_alpha(anchor)
        metrics.update(self._actor_metrics)
        if self.updates % self.target_every == 0:
            self._update_targets()
        metrics.update(self._update_contrastive(anchor, positive))
        self.updates += 1
        return metrics, critic_losses

    def get_extra_state(self) -> dict:
        """Optimiser states and the update counter (saved inside ``state_dict``)."""
        return {"critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "curl_opt": self.curl_opt.state_dict(),
                "updates": self.updates}

    def set_extra_state(self, state: dict) -> None:
        for name in ("critic_opt", "actor_opt", "alpha_opt", "curl_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.updates = int(state["updates"])
