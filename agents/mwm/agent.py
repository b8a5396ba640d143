"""MWM: a masked autoencoder on conv-stem tokens, and a world model on its latents.

Each update (values and sources: docs/HYPERPARAMETERS.md):
1. autoencoder: sample 32 x 32 frames, mask 75% of the 8x8 feature tokens, reconstruct
   all pixels and the reward (its own optimiser);
2. world model: encode 16 x 50 frames with the autoencoder at mask ratio 0 under
   stop-gradient, run the RSSM over the flat-ViT embedding of those tokens and
   reconstruct the tokens;
3. actor-critic in imagination from the posterior states.
Before the first policy step the autoencoder alone is trained for ``run.pretrain``
updates.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from agents.base import Metrics
from agents.world_model_agent import WorldModelAgent
from mwm.mae import MaskedAutoencoder
from mwm.masking import make_masking
from mwm.optim import Optimizer
from mwm.stem import deprocess
from mwm.token_norm import TokenStandardizer
from mwm.world_model import FlatViTEncoder, TokenDecoder

FIGURE_FRAMES = 8  # frames in the input | masked | reconstruction figure


def mae_kwargs(cfg, image_shape) -> Dict[str, Any]:
    """MaskedAutoencoder arguments from the ``mae`` config block for images (H, W, C)."""
    m = cfg.mae
    return dict(
        in_channels=image_shape[-1], image_size=image_shape[0], stem=m.stem, stem_channels=tuple(m.stem_channels),
        patch=m.patch, width=m.width, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio, dec_width=m.dec_width,
        dec_depth=m.dec_depth, dec_heads=m.dec_heads, simmim=m.simmim, reward_head=m.reward_head,
        loss_on=m.loss_on, norm_pix=m.norm_pix, reward_scale=m.reward_scale)


def build_mae(cfg, image_shape) -> MaskedAutoencoder:
    """The autoencoder from the ``mae`` config block for images (H, W, C)."""
    return MaskedAutoencoder(**mae_kwargs(cfg, image_shape))


class MWMAgent(WorldModelAgent):
    """Masked World Models: see the module docstring and agents/mwm/README.md."""

    def build_autoencoder(self, cfg, image_shape) -> MaskedAutoencoder:
        """The representation the world model reads (SiamMAE overrides this alone)."""
        return build_mae(cfg, image_shape)

    def build_observation_model(self, cfg, image_shape, feat_dim):
        self.mae = self.build_autoencoder(cfg, image_shape)
        tokens = self.mae.num_tokens + 1  # cls + L
        w = cfg.wm
        encoder = FlatViTEncoder(cfg.mae.width, tokens, w.flat_width, w.flat_depth, w.flat_heads)
        decoder = TokenDecoder(feat_dim, cfg.mae.width, tokens, w.dec_width, w.dec_depth, w.dec_heads)
        self.token_norm = TokenStandardizer(tokens, cfg.mae.width, w.token_norm_decay) if w.token_norm else None
        return encoder, decoder, w.flat_width

    def __init__(self, cfg, obs_space, act_space, device):
        super().__init__(cfg, obs_space, act_space, device)
        m = cfg.mae
        self.mae_opt = Optimizer("mae", self.mae.parameters(), m.lr, m.eps, m.clip, m.wd, m.warmup,
                                 fused=cfg.speed.fused_optim and device.type == "cuda")

    def optimizers(self):
        return {**super().optimizers(), "mae": self.mae_opt}

    @torch.no_grad()
    def wm_inputs(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        lead = images.shape[:2]
        tokens = self.mae.features(images.flatten(0, 1))  # (B*T, 1+L, D)
        if self.token_norm is not None:
            if train:
                self.token_norm.update(tokens)
            tokens = self.token_norm(tokens)
        return tokens.reshape(*lead, *tokens.shape[1:])  # (B, T, 1+L, D)

    def masking(self, batch: int, length: int):
        m = self.cfg.mae
        return make_masking(m.mask_type, batch, length, self.mae.num_tokens, m.mask_ratio, self.device)

    def representation_update(self, replay) -> Metrics:
        m = self.cfg.mae
        batch = self.batches(replay, "mae", m.batch, m.length)
        with self.autocast():
            loss, metrics = self.mae.loss(batch["image"].flatten(0, 1), batch["reward"].flatten(0, 1).float(),
                                          self.masking(m.batch, m.length))
        metrics.update(self._step(self.mae_opt, loss))
        return metrics

    def pretrain(self, replay, updates: int) -> Metrics:
        """Autoencoder-only updates (official MWM: 5000) before the first policy step."""
        metrics: Metrics = {}
        for _ in range(updates):
            metrics = self.representation_update(replay)
        return metrics

    @torch.no_grad()
    def inputs_to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predicted tokens (B, T, 1+L, D) -> pixels through the autoencoder's decoder."""
        lead = tokens.shape[:2]
        if self.token_norm is not None:
            tokens = self.token_norm.inverse(tokens)
        flat = tokens.flatten(0, 1)  # (B*T, 1+L, D)
        masking = make_masking("random", flat.shape[0], 1, self.mae.num_tokens, 0.0, self.device)
        pixels, _ = self.mae.decode(flat, masking)  # (B*T, L, P)
        images = deprocess(self.mae.unpatchify(pixels))  # (B*T, H, W, C)
        return images.reshape(*lead, *images.shape[1:])

    @torch.no_grad()
    def report(self, replay) -> Dict[str, Any]:
        """The MAE figure (input | masked | reconstruction | pasted) and the open-loop video."""
        media = super().report(replay)
        if replay.num_episodes == 0:
            return media
        images = torch.as_tensor(replay.sample(1, FIGURE_FRAMES)["image"][0]).to(self.device)  # (F, H, W, C)
        figure = self.mae.reconstruct(images, self.masking(1, FIGURE_FRAMES))
        rows = [figure[k] for k in ("input", "masked", "reconstruction", "pasted")]  # each (F, H, W, C)
        grid = torch.cat([torch.cat(list(row), dim=1) for row in rows], dim=0)  # (4H, F*W, C)
        media["mae/input_masked_reconstruction"] = grid.cpu().numpy()
        return media
