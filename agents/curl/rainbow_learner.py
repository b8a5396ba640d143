"""CURL for discrete actions: data-efficient Rainbow plus the contrastive loss, one optimiser.

One update (CURL's Atari code, built on Kaixhin's Rainbow):

1. C51 log-probabilities of the sampled states (not augmented) under the online net
   with fresh noise; double-Q target: next action chosen by the online net, its
   distribution from the target net, projected onto the support (n-step, gamma^n).
2. Queries: the online encoder + projection on one random shift of the states; keys:
   the momentum encoder on another random shift; bilinear logits, InfoNCE.
3. Per-sample loss = C51 cross-entropy + aux_weight * InfoNCE; the optimiser minimises
   its importance-weighted mean (gradient norm clipped at 10); the per-sample losses
   become the new priorities.
4. Momentum encoder EMA (tau = 1 - 0.999); every ``target_every`` updates the target
   net copies the online net.
"""

from __future__ import annotations

import copy
from itertools import chain
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from agents.curl.augment import augment, center_crop
from agents.curl.contrastive import BilinearSimilarity, KeyEncoder, ema_update
from agents.curl.losses import c51_loss, categorical_projection, contrastive_logits, info_nce_loss
from agents.curl.rainbow import RainbowNetwork, expected_q
from mwm.optim import Optimizer


class RainbowLearner(nn.Module):
    """Online, target and momentum networks of CURL-Rainbow, with their optimiser and counters.

    Batches are dicts of tensors on the learner's device: ``obs``, ``next_obs`` (B, k*C,
    H, W) float pixels, ``action`` (B,) int64, ``reward`` (B,) n-step returns,
    ``discount`` (B,) gamma^n or 0, ``weight`` (B,) importance weights.
    """

    def __init__(self, in_channels: int, image_size: int, num_actions: int, *, channels: Sequence[int],
                 kernels: Sequence[int], strides: Sequence[int], hidden: int, latent: int, atoms: int,
                 v_min: float, v_max: float, noisy_std: float, pad: int, crop: int, lr: float, eps: float,
                 clip: float, aux_weight: float, logit_scale: float, key_tau: float, target_every: int,
                 device: torch.device, fused: bool = False):
        super().__init__()
        self.pad, self.crop = pad, crop
        self.aux_weight, self.logit_scale, self.key_tau = aux_weight, logit_scale, key_tau
        self.target_every = target_every
        self.online = RainbowNetwork(in_channels, crop, num_actions, channels, kernels, strides, hidden, atoms,
                                     noisy_std, latent)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.key = KeyEncoder(self.online.encoder, self.online.projection)
        self.similarity = BilinearSimilarity(latent)
        self.register_buffer("support", torch.linspace(v_min, v_max, atoms))
        self.to(device)
        self.optimizer = Optimizer("rainbow", chain(self.online.parameters(), self.similarity.parameters()),
                                   lr=lr, eps=eps, clip=clip, wd=0.0, fused=fused)
        self.updates = 0

    @torch.no_grad()
    def act(self, images: torch.Tensor, explore: bool) -> torch.Tensor:
        """Greedy actions (N,) under the expected return; ``explore`` draws fresh noise (noisy nets)."""
        if explore:
            self.online.reset_noise()
        log_probs = self.online.log_probs(center_crop(images, self.crop), noisy=explore)  # (N, A, atoms)
        return expected_q(log_probs, self.support).argmax(-1)  # (N,)

    @torch.no_grad()
    def _target_distribution(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Double-Q C51 target m (B, atoms) for the n-step next states."""
        next_obs = center_crop(batch["next_obs"], self.crop)
        best = expected_q(self.online.log_probs(next_obs), self.support).argmax(-1)  # (B,)
        self.target.reset_noise()
        next_probs = self.target.log_probs(next_obs).exp()  # (B, A, atoms)
        chosen = next_probs[torch.arange(len(best), device=best.device), best]  # (B, atoms)
        return categorical_projection(chosen, batch["reward"], batch["discount"], self.support)

    def update(self, batch: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """One update; returns scalar metrics and the new priorities (B,) (per-sample losses)."""
        obs, action = batch["obs"], batch["action"]
        self.online.reset_noise()
        log_probs = self.online.log_probs(center_crop(obs, self.crop))  # (B, A, atoms)
        taken = log_probs[torch.arange(len(action), device=action.device), action]  # (B, atoms)
        rl = c51_loss(taken, self._target_distribution(batch))  # (B,)

        queries = self.online.query(augment(obs, self.pad, self.crop))  # (B, latent)
        keys = self.key(augment(obs, self.pad, self.crop))  # (B, latent)
        logits = contrastive_logits(queries, keys, self.similarity.weight, self.logit_scale)  # (B, B)
        contrastive = info_nce_loss(logits).mean()

        per_sample = rl + self.aux_weight * contrastive  # (B,)
        metrics = self.optimizer.step((batch["weight"] * per_sample).mean())
        ema_update(self.key.parameters(),
                   chain(self.online.encoder.parameters(), self.online.projection.parameters()), self.key_tau)
        self.updates += 1
        if self.updates % self.target_every == 0:
            self.target.load_state_dict(self.online.state_dict())
        with torch.no_grad():
            q = expected_q(log_probs, self.support)  # (B, A)
            metrics.update({
                "rl/loss": (batch["weight"] * rl).mean().detach(),
                "rl/q_mean": q.mean(),
                "rl/q_taken": q.gather(1, action[:, None]).mean(),
                "rl/return_mean": batch["reward"].mean(),
                "curl/contrastive_loss": contrastive.detach(),
                "curl/accuracy": (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean(),
                "rainbow/nonfinite": self.optimizer.nonfinite_in_row.float(),
            })
        return metrics, per_sample.detach()

    def get_extra_state(self) -> dict:
        """Optimiser state and the update counter (saved inside ``state_dict``)."""
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
