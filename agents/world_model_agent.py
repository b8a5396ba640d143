"""The Dreamer family: an RSSM world model and an actor-critic trained in imagination.

MWM, DreamerV2 and SiamMAE differ only in what the world model reads and reconstructs
(the autoencoder's tokens, or pixels) and in whether a representation is trained beside
it; everything else -- RSSM, heads, actor-critic, optimisers, the update -- is here,
once.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import torch
from torch import nn

from agents.base import Agent, Metrics
from mwm.actor_critic import ActorCritic
from mwm.optim import Optimizer
from mwm.world_model import WorldModel, rssm_feat_dim

OPEN_LOOP_CONTEXT = 5  # observed steps before the open-loop prediction (DreamerV2's figure)


def action_size(act_space) -> int:
    return int(act_space.n) if hasattr(act_space, "n") else int(np.prod(act_space.shape))


class WorldModelAgent(Agent):
    """World model + actor-critic; subclasses choose the observation model.

    Subclasses implement :meth:`build_observation_model` (the world model's encoder and
    decoder), :meth:`wm_inputs` (what the world model reads, from uint8 images) and may
    train a representation beside it in :meth:`representation_update`.
    """

    def __init__(self, cfg, obs_space, act_space, device: torch.device):
        super().__init__(cfg, obs_space, act_space, device)
        self.image_shape = tuple(obs_space["image"].shape)  # (H, W, C)
        self.discrete = hasattr(act_space, "n")
        self.action_dim = action_size(act_space)
        feat_dim = rssm_feat_dim(dict(cfg.rssm))
        encoder, decoder, embed_dim = self.build_observation_model(cfg, self.image_shape, feat_dim)
        wm = cfg.wm
        self.wm = WorldModel(
            encoder, decoder, embed_dim, self.action_dim, rssm=dict(cfg.rssm), head_layers=wm.head_layers,
            head_units=wm.head_units, reward_transform=wm.reward_transform, discount_head=wm.discount_head,
            kl_balance=wm.kl_balance, kl_free=wm.kl_free,
            loss_scales={"kl": wm.kl_scale, "recon": wm.recon_scale, "reward": wm.reward_scale,
                         **({"discount": wm.discount_scale} if wm.discount_head else {})})
        ac = cfg.ac
        self.ac = ActorCritic(
            self.wm.feat_dim, self.action_dim, self.discrete, layers=ac.layers, units=ac.units,
            horizon=ac.horizon, discount=ac.discount, lam=ac.lam, entropy=ac.entropy, actor_grad=ac.actor_grad,
            slow_critic_every=ac.slow_critic_every, return_norm=ac.return_norm, min_std=ac.min_std)
        self.to(device)
        fused = cfg.speed.fused_optim and device.type == "cuda"
        self.wm_opt = Optimizer("model", self.wm.parameters(), wm.lr, wm.eps, wm.clip, wm.wd, fused=fused)
        self.actor_opt = Optimizer("actor", self.ac.actor.parameters(), ac.actor_lr, ac.eps, ac.clip, ac.wd,
                                   fused=fused)
        self.critic_opt = Optimizer("critic", self.ac.critic.parameters(), ac.critic_lr, ac.eps, ac.clip, ac.wd,
                                    fused=fused)
        self._datasets: Dict[str, Iterator] = {}

    # ------------------------------------------------------------ subclass hooks

    @abc.abstractmethod
    def build_observation_model(self, cfg, image_shape, feat_dim) -> Tuple[nn.Module, nn.Module, int]:
        """(encoder, decoder, embed_dim) of the world model."""

    @abc.abstractmethod
    def wm_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, T, H, W, C) -> world-model inputs (B, T, ...), no gradient to any
        representation trained elsewhere."""

    def representation_update(self, replay) -> Metrics:
        """Train a representation beside the world model (none by default)."""
        return {}

    def inputs_to_images(self, inputs: torch.Tensor) -> torch.Tensor:
        """World-model decoder outputs (B, T, ...) -> uint8 images (B, T, H, W, C)."""
        raise TypeError(f"{type(self).__name__} cannot turn world-model outputs into images")

    # ------------------------------------------------------------ helpers

    def optimizers(self) -> Dict[str, Optimizer]:
        return {"wm": self.wm_opt, "actor": self.actor_opt, "critic": self.critic_opt}

    def autocast(self):
        """bf16 autocast on CUDA when configured; a no-op on CPU."""
        if self.device.type == "cuda" and self.cfg.speed.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batches(self, replay, name: str, batch: int, length: int) -> Dict[str, torch.Tensor]:
        """The next (B, T) batch of the named stream, prefetched on a background thread."""
        if name not in self._datasets:
            self._datasets[name] = replay.dataset(
                batch, length, prefetch=self.cfg.replay.prefetch, device=self.device,
                pin_memory=self.cfg.speed.pin_memory and self.device.type == "cuda",
                prioritize_ends=self.cfg.replay.prioritize_ends)
        return next(self._datasets[name])

    def close(self) -> None:
        for dataset in self._datasets.values():
            dataset.close()
        self._datasets = {}

    @staticmethod
    def _step(opt: Optimizer, loss: torch.Tensor) -> Metrics:
        metrics = opt.step(loss)
        metrics[f"{opt.name}/nonfinite"] = (opt.nonfinite_in_row > 0).float()
        return metrics

    # ------------------------------------------------------------ the agent interface

    @torch.no_grad()
    def policy(self, obs: Dict[str, torch.Tensor], state: Any, mode: str = "train") -> Tuple[torch.Tensor, Any]:
        images = obs["image"]  # (N, H, W, C)
        n = images.shape[0]
        if state is None:
            state = (self.wm.rssm.initial(n, self.device), torch.zeros(n, self.action_dim, device=self.device))
        latent, prev_action = state
        with self.autocast():
            embed = self.wm.encoder(self.wm_inputs(images[:, None]))[:, 0]  # (N, E)
        post, _ = self.wm.rssm.obs_step(latent, prev_action, embed.float(), obs["is_first"])
        action = self.ac.act(self.wm.feature(post), mode)  # (N, A)
        return action, (post, action)

    def update(self, replay) -> Metrics:
        """One update: representation (if any), world model, then actor and critic."""
        metrics = dict(self.representation_update(replay))
        batch = self.batches(replay, "wm", self.cfg.replay.batch, self.cfg.replay.length)
        with self.autocast():
            inputs = self.wm_inputs(batch["image"])  # (B, T, ...)
            action = batch["action"].float()  # (B, T, A)
            wm_loss, post, wm_metrics = self.wm.loss(inputs, action, batch["reward"].float(),
                                                     batch["is_first"], batch["is_terminal"])
        metrics.update({f"wm/{k}": v for k, v in wm_metrics.items()})
        metrics.update(self._step(self.wm_opt, wm_loss))
        with self.autocast():
            actor_loss, critic_loss, ac_metrics = self.ac.loss(self.wm, post, batch["is_terminal"])
        metrics.update({f"ac/{k}": v for k, v in ac_metrics.items()})
        metrics.update(self._step(self.actor_opt, actor_loss))
        metrics.update(self._step(self.critic_opt, critic_loss))
        self.ac.update_slow_critic()
        return metrics

    @torch.no_grad()
    def report(self, replay) -> Dict[str, Any]:
        """Open-loop video: observed context, then imagined steps, against the truth."""
        length = max(min(self.cfg.replay.length, 3 * OPEN_LOOP_CONTEXT), OPEN_LOOP_CONTEXT + 1)
        if replay.num_episodes == 0:
            return {}
        batch = {k: torch.as_tensor(v).to(self.device)
                 for k, v in replay.sample(min(4, self.cfg.replay.batch), length).items()
                 if np.asarray(v).dtype != object}
        with self.autocast():
            pred = self.wm.decode_open_loop(self.wm_inputs(batch["image"]), batch["action"].float(),
                                            batch["is_first"], OPEN_LOOP_CONTEXT)
        try:
            imagined = self.inputs_to_images(pred.float())  # (B, T, H, W, C)
        except TypeError:
            return {}
        truth = batch["image"]
        error = ((imagined.float() - truth.float()).abs() / 2 + 127.5).clamp(0, 255).to(torch.uint8)
        video = torch.cat([truth, imagined, error], dim=2)  # (B, T, 3H, W, C): truth / model / error
        video = torch.cat(list(video), dim=2)  # (T, 3H, B*W, C)
        return {"wm/open_loop": video.cpu().numpy()}

    # ------------------------------------------------------------ checkpoints

    def state_dict(self, *args, **kwargs):
        state = {"modules": super().state_dict(*args, **kwargs)}
        state["optimizers"] = {name: opt.state_dict() for name, opt in self.optimizers().items()}
        return state

    def load_state_dict(self, state, strict: bool = True):
        result = super().load_state_dict(state["modules"], strict=strict)
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        return result
