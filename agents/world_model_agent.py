"""The Dreamer family: a representation, an RSSM world model and an actor-critic.

MWM, DreamerV2 and SiamMAE differ only in their representation
(:class:`mwm.representation.Representation`: what the world model reads and
reconstructs, and whether it trains beside it); everything else -- RSSM, heads,
actor-critic, optimisers, the update -- is here, once.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import torch

from agents.base import Agent, Metrics
from mwm import diagnostics
from mwm.actor_critic import ActorCritic
from mwm.config import construct
from mwm.errors import UserError
from mwm.optim import Optimizer
from mwm.representations import make_representation
from mwm.speed import CudaGraphCapture, GraphedStep, compile_modules, schedule_all, speed_settings
from mwm.vit import Transformer
from mwm.world_model import WorldModel, rssm_feat_dim
from replay.prefetch import DeviceEpisodes, DeviceSampler

OPEN_LOOP_CONTEXT = diagnostics.CONTEXT  # observed steps before the open-loop prediction (DreamerV2's figure)
DIAGNOSTIC_SEQUENCES = 32  # held-out sequences scored at each report
WM_KEYS = ("image", "action", "reward", "is_first", "is_terminal")  # what the world-model update reads
COMPILED_TYPES = (Transformer,)  # the kernel-bound stacks worth fusing (speed.compile)


def action_size(act_space) -> int:
    return int(act_space.n) if hasattr(act_space, "n") else int(np.prod(act_space.shape))


def mark_context(images: torch.Tensor, context: int, bar: int = 2) -> torch.Tensor:
    """Copy of uint8 frames (B, T, H, W, C) with a ``bar``-pixel strip across the top: green
    on the first ``context`` (observed) steps, red on the rest (imagined)."""
    marked = images.clone()
    colour = torch.tensor([[0, 200, 0], [220, 0, 0]], dtype=torch.uint8, device=images.device)  # observed, imagined
    if images.shape[-1] == 1:  # grey frames: white for observed, black for imagined
        colour = torch.tensor([[255], [0]], dtype=torch.uint8, device=images.device)
    marked[:, :context, :bar] = colour[0]
    marked[:, context:, :bar] = colour[1]
    return marked


def legacy_module_keys(modules: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Checkpoints written before representations were their own module kept the autoencoder
    and the token statistics on the agent (``mae.*``, ``token_norm.*``); map them to
    ``representation.*``."""
    prefixes = ("mae.", "token_norm.")
    return {f"representation.{key}" if key.startswith(prefixes) else key: value for key, value in modules.items()}


class WorldModelAgent(Agent):
    """Representation + world model + actor-critic; subclasses name the representation.

    ``representation`` (a key of :data:`mwm.representations.REPRESENTATIONS`) is the one
    thing a subclass sets. The update is written once, eagerly, over static shapes and
    without host synchronisation: the representation's own loss (if it trains), then
    :meth:`world_model_step` and :meth:`actor_critic_step`; the policy is
    :meth:`policy_step`. With ``speed.cuda_graph`` on CUDA the world-model,
    actor-critic and policy steps run as captured CUDA graphs
    (:class:`mwm.speed.GraphedStep`) computing the same thing.
    """

    representation_name: str = ""
    graph_capture = CudaGraphCapture  # the capture backend of the CUDA-graph path

    def __init__(self, cfg, obs_space, act_space, device: torch.device):
        super().__init__(cfg, obs_space, act_space, device)
        self.image_shape = tuple(obs_space["image"].shape)  # (H, W, C)
        self.discrete = hasattr(act_space, "n")
        self.action_dim = action_size(act_space)
        self.representation = make_representation(self.representation_name, cfg, self.image_shape, device)
        encoder, decoder, embed_dim = self.representation.world_model_io(rssm_feat_dim(dict(cfg.rssm)))
        self.wm = construct(WorldModel, cfg.wm, encoder=encoder, decoder=decoder, embed_dim=embed_dim,
                            action_dim=self.action_dim, rssm=dict(cfg.rssm))
        self.ac = construct(ActorCritic, cfg.ac, feat_dim=self.wm.feat_dim, action_dim=self.action_dim,
                            discrete=self.discrete)
        self.to(device)
        self.speed = speed_settings(device, **cfg.speed)
        fused, graphs = self.speed.fused_optim, self.speed.cuda_graph
        self.wm_opt = construct(Optimizer, cfg.wm, name="model", params=self.wm.parameters(), fused=fused,
                                capturable=graphs)
        self.actor_opt = construct(Optimizer, cfg.ac, name="actor", params=self.ac.actor.parameters(),
                                   lr=cfg.ac.actor_lr, fused=fused, capturable=graphs)
        self.critic_opt = construct(Optimizer, cfg.ac, name="critic", params=self.ac.critic.parameters(),
                                    lr=cfg.ac.critic_lr, fused=fused, capturable=graphs)
        # The representation's optimiser is not captured in graphs (its update runs eagerly).
        self.rep_opt = self.representation.make_optimizer(fused=fused)
        if self.speed.compile:
            compile_modules(self, COMPILED_TYPES, self.speed.compile_backend)
        self._datasets: Dict[str, Iterator] = {}
        self._device_episodes = DeviceEpisodes(device) if self.speed.replay_on_device else None
        self._graphs: Dict[Any, GraphedStep] = {}

    # ------------------------------------------------------------ helpers

    def optimizers(self) -> Dict[str, Optimizer]:
        optimizers = {"wm": self.wm_opt, "actor": self.actor_opt, "critic": self.critic_opt}
        if self.rep_opt is not None:
            optimizers[self.rep_opt.name] = self.rep_opt
        return optimizers

    def autocast(self):
        """bf16 autocast on CUDA when configured; a no-op on CPU."""
        if self.speed.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batches(self, replay, name: str, batch: int, length: int) -> Dict[str, torch.Tensor]:
        """The next (B, T) batch of the named stream: prefetched on a background thread, or
        gathered on the GPU from episodes kept there (``speed.replay_on_device``)."""
        if name not in self._datasets:
            if self._device_episodes is not None:
                self._datasets[name] = DeviceSampler(replay, self._device_episodes, batch, length,
                                                     self.cfg.replay.prioritize_ends)
            else:
                self._datasets[name] = replay.dataset(
                    batch, length, prefetch=self.cfg.replay.prefetch, device=self.device,
                    pin_memory=self.speed.pin_memory, prioritize_ends=self.cfg.replay.prioritize_ends)
        return next(self._datasets[name])

    def close(self) -> None:
        for dataset in self._datasets.values():
            dataset.close()
        self._datasets = {}

    def run_step(self, key: Any, fn, inputs: Any, optimizers: Tuple[Optimizer, ...] = ()) -> Any:
        """``fn(inputs)``: eagerly, or as the CUDA graph ``key`` when ``speed.cuda_graph`` is on.

        ``optimizers`` are those ``fn`` steps; their host-side schedules run before each
        call, outside the graph (:meth:`mwm.optim.Optimizer.schedule`).
        """
        if not self.speed.cuda_graph:
            return fn(inputs)
        if key not in self._graphs:
            self._graphs[key] = GraphedStep(fn, str(key), prepare=schedule_all(optimizers),
                                            make_capture=self.graph_capture)
        return self._graphs[key](inputs)

    @staticmethod
    def _step(opt: Optimizer, loss: torch.Tensor) -> Metrics:
        metrics = opt.step(loss)
        metrics[f"{opt.name}/nonfinite"] = opt.nonfinite_in_row.float()
        return metrics

    # ------------------------------------------------------------ the agent interface

    @torch.no_grad()
    def policy(self, obs: Dict[str, torch.Tensor], state: Any, mode: str = "train") -> Tuple[torch.Tensor, Any]:
        images = obs["image"]  # (N, H, W, C)
        n = images.shape[0]
        if state is None:
            state = (self.wm.rssm.initial(n, self.device), torch.zeros(n, self.action_dim, device=self.device))
        latent, prev_action = state
        inputs = {"image": images, "is_first": obs["is_first"], "latent": latent, "action": prev_action}
        action, post = self.run_step(("policy", mode, n), lambda x: self.policy_step(x, mode), inputs)
        return action, (post, action)

    @torch.no_grad()
    def policy_step(self, inputs: Dict[str, Any], mode: str) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """One filtering step and an action: {image (N, H, W, C), is_first (N,), latent, action
        (N, A) the previous one} -> (action (N, A), posterior state)."""
        with self.autocast():
            embed = self.wm.encoder(self.representation.inputs(inputs["image"][:, None]))[:, 0]  # (N, E)
        post, _ = self.wm.rssm.obs_step(inputs["latent"], inputs["action"], embed.float(), inputs["is_first"])
        action = self.ac.act(self.wm.feature(post), mode)  # (N, A)
        return action, post

    def representation_update(self, replay) -> Metrics:
        """One update of the representation's own objective (none for one that does not train)."""
        if self.rep_opt is None:
            return {}
        with self.autocast():
            loss, metrics = self.representation.loss(lambda name, b, t: self.batches(replay, name, b, t))
        metrics.update(self._step(self.rep_opt, loss))
        return metrics

    def update(self, replay) -> Metrics:
        """One update: representation (if it trains), world model, then actor and critic."""
        metrics = dict(self.representation_update(replay))
        batch = self.batches(replay, "wm", self.cfg.replay.batch, self.cfg.replay.length)
        batch = {key: batch[key] for key in WM_KEYS}
        wm_metrics, post = self.run_step("world_model", self.world_model_step, batch, (self.wm_opt,))
        metrics.update(wm_metrics)
        ac_inputs = {"post": post, "is_terminal": batch["is_terminal"]}
        metrics.update(self.run_step("actor_critic", self.actor_critic_step, ac_inputs,
                                     (self.actor_opt, self.critic_opt)))
        self.ac.update_slow_critic()
        return metrics

    def pretrain(self, replay, updates: int) -> Metrics:
        """Before the first policy step: the representation alone (MWM, SiamMAE; official MWM
        5000 updates), or ordinary updates for a representation that does not train."""
        if self.rep_opt is None:
            return super().pretrain(replay, updates)
        metrics: Metrics = {}
        for _ in range(updates):
            metrics = self.representation_update(replay)
        return metrics

    def world_model_step(self, batch: Dict[str, torch.Tensor]) -> Tuple[Metrics, Dict[str, torch.Tensor]]:
        """World-model update on a (B, T) batch -> (metrics, posterior states (B, T, ...))."""
        with self.autocast():
            inputs = self.representation.inputs(batch["image"], train=True)  # (B, T, ...)
            action = batch["action"].float()  # (B, T, A)
            wm_loss, post, wm_metrics = self.wm.loss(inputs, action, batch["reward"].float(),
                                                     batch["is_first"], batch["is_terminal"])
        metrics = {f"wm/{k}": v for k, v in wm_metrics.items()}
        metrics.update(self._step(self.wm_opt, wm_loss))
        return metrics, post

    def actor_critic_step(self, inputs: Dict[str, Any]) -> Metrics:
        """Actor and critic updates from {post: posterior states (B, T, ...), is_terminal (B, T)}."""
        with self.autocast():
            actor_loss, critic_loss, ac_metrics = self.ac.loss(self.wm, inputs["post"], inputs["is_terminal"])
        metrics = {f"ac/{k}": v for k, v in ac_metrics.items()}
        metrics.update(self._step(self.actor_opt, actor_loss))
        metrics.update(self._step(self.critic_opt, critic_loss))
        return metrics

    @torch.no_grad()
    def report(self, replay) -> Dict[str, Any]:
        """The representation's figures and, where it decodes, the open-loop video."""
        if replay.num_episodes == 0:
            return {}
        media = dict(self.representation.figure(replay))
        if self.representation.decodes:
            media["wm/open_loop"] = self.open_loop_video(replay)
        return media

    def open_loop_video(self, replay) -> np.ndarray:
        """(T, 3H, B*W, C) uint8: truth / model / error rows of a few replay sequences; the model
        reads ``OPEN_LOOP_CONTEXT`` frames, then imagines. Observed frames carry a green bar at
        their top, imagined ones a red bar (:func:`mark_context`)."""
        length = max(min(self.cfg.replay.length, 3 * OPEN_LOOP_CONTEXT), OPEN_LOOP_CONTEXT + 1)
        batch = {k: torch.as_tensor(v).to(self.device)
                 for k, v in replay.sample(min(4, self.cfg.replay.batch), length).items()
                 if np.asarray(v).dtype != object}
        with self.autocast():
            pred = self.wm.decode_open_loop(self.representation.inputs(batch["image"]), batch["action"].float(),
                                            batch["is_first"], OPEN_LOOP_CONTEXT)
        imagined = self.representation.to_images(pred.float())  # (B, T, H, W, C)
        truth = batch["image"]
        error = ((imagined.float() - truth.float()).abs() / 2 + 127.5).clamp(0, 255).to(torch.uint8)
        imagined = mark_context(imagined, OPEN_LOOP_CONTEXT)
        video = torch.cat([truth, imagined, error], dim=2)  # (B, T, 3H, W, C): truth / model / error
        return torch.cat(list(video), dim=2).cpu().numpy()  # (T, 3H, B*W, C)

    @torch.no_grad()
    def diagnostics(self, episodes, replay) -> Dict[str, float]:
        """Open-loop scores of the world model (:mod:`mwm.diagnostics`) on windows of the
        held-out ``episodes``, or on replay sequences where no episode is long enough."""
        length = diagnostics.CONTEXT + diagnostics.HORIZON
        rng = np.random.default_rng(len(episodes))
        try:
            batch = diagnostics.cut_windows(episodes, length, DIAGNOSTIC_SEQUENCES, rng)
            source = "held_out"
        except ValueError:
            try:
                batch = replay.sample(DIAGNOSTIC_SEQUENCES, length)
            except UserError:  # no episode of that length yet
                return {}
            source = "replay"
        batch = {key: torch.as_tensor(batch[key]).to(self.device) for key in diagnostics.SEQUENCE_KEYS}
        with self.autocast():
            result = diagnostics.open_loop(self, batch)
        return {**diagnostics.scalars(result), "diag/held_out": float(source == "held_out")}

    # ------------------------------------------------------------ checkpoints

    def state_dict(self, *args, **kwargs):
        state = {"modules": super().state_dict(*args, **kwargs)}
        state["optimizers"] = {name: opt.state_dict() for name, opt in self.optimizers().items()}
        return state

    def load_state_dict(self, state, strict: bool = True):
        result = super().load_state_dict(legacy_module_keys(state["modules"]), strict=strict)
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        for graph in self._graphs.values():  # the optimizers' state tensors are new: capture again
            graph.reset()
        return result
