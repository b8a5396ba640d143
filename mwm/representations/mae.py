"""MWM's representation: a masked autoencoder on conv-stem tokens (Seo et al., 2022).

The world model reads the autoencoder's tokens of unmasked frames (cls + L tokens of
width D) through a flat ViT, and reconstructs them with a ViT decoder; the
autoencoder trains beside it on its own batches, masking ``mae.mask_ratio`` of the
tokens and reconstructing all pixels and the reward (values: docs/HYPERPARAMETERS.md).
With ``wm.token_norm`` the world model reads the tokens standardised
(:mod:`mwm.token_norm`; off in the official code).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from mwm.config import construct
from mwm.mae import MaskedAutoencoder
from mwm.masking import Masking, make_masking
from mwm.optim import Optimizer
from mwm.probes.figures import image_grid
from mwm.representation import Metrics, Representation, Sampler
from mwm.stem import deprocess
from mwm.token_norm import TokenStandardizer
from mwm.world_model import FlatViTEncoder, TokenDecoder

FIGURE_FRAMES = 8  # frames in the autoencoder's figure
FIGURE_GAP = 2  # white pixels between the figure's tiles
FIGURE_LABELS = 110  # width of the figure's label column, pixels


def build_mae(cfg, image_shape, **given) -> MaskedAutoencoder:
    """The autoencoder of the ``mae`` config block for images (H, W, C); ``given``
    overrides keys (the probes' pixel-patch and SimMIM variants set ``stem``, ``simmim``)."""
    return construct(MaskedAutoencoder, cfg.mae, in_channels=image_shape[-1], image_size=image_shape[0], **given)


def labelled_grid(rows: Dict[str, torch.Tensor]) -> np.ndarray:
    """uint8 rows {label: (F, H, W, C)} -> one (H', W', C) figure with gaps and row labels."""
    return image_grid({name: images.cpu().numpy() for name, images in rows.items()}, scale=1, gap=FIGURE_GAP,
                      label_width=FIGURE_LABELS)


class MaskedAutoencoderRepresentation(Representation):
    """``self.mae`` (:class:`mwm.mae.MaskedAutoencoder`), its optimiser ``mae``, and the
    optional running token standardisation ``self.token_norm``."""

    name = "mae"

    def __init__(self, cfg, image_shape, device):
        super().__init__(cfg, image_shape, device)
        self.mae = self.build_model()
        self.num_inputs = self.mae.num_tokens + 1  # cls + L tokens
        self.token_norm = (construct(TokenStandardizer, cfg.wm, prefix="token_norm_", num_tokens=self.num_inputs,
                                     dim=cfg.mae.width) if cfg.wm.token_norm else None)

    def build_model(self) -> MaskedAutoencoder:
        return build_mae(self.cfg, self.image_shape)

    def world_model_io(self, feat_dim: int):
        tokens, width = self.num_inputs, self.cfg.mae.width
        encoder = construct(FlatViTEncoder, self.cfg.wm, prefix="flat_", token_dim=width, num_tokens=tokens)
        decoder = construct(TokenDecoder, self.cfg.wm, prefix="dec_", feat_dim=feat_dim, token_dim=width,
                            num_tokens=tokens)
        return encoder, decoder, encoder.out_dim

    @torch.no_grad()
    def inputs(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        lead = images.shape[:2]
        tokens = self.mae.features(images.flatten(0, 1))  # (B*T, 1+L, D)
        if self.token_norm is not None:
            if train:
                self.token_norm.update(tokens)
            tokens = self.token_norm(tokens)
        return tokens.reshape(*lead, *tokens.shape[1:])  # (B, T, 1+L, D)

    @torch.no_grad()
    def to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, 1+L, D) -> pixels through the autoencoder's decoder, nothing masked."""
        lead = tokens.shape[:2]
        if self.token_norm is not None:
            tokens = self.token_norm.inverse(tokens)
        flat = tokens.flatten(0, 1)  # (B*T, 1+L, D)
        masking = make_masking("random", flat.shape[0], 1, self.mae.num_tokens, 0.0, self.device)
        pixels, _ = self.mae.decode(flat, masking)  # (B*T, L, P)
        images = deprocess(self.mae.unpatchify(pixels))  # (B*T, H, W, C)
        return images.reshape(*lead, *images.shape[1:])

    def masking(self, batch: int, length: int) -> Masking:
        """The training masking of ``batch * length`` frames (``mae.mask_type``, ``mae.mask_ratio``)."""
        m = self.cfg.mae
        return make_masking(m.mask_type, batch, length, self.mae.num_tokens, m.mask_ratio, self.device)

    def loss(self, sample: Sampler) -> Tuple[torch.Tensor, Metrics]:
        """The MAE loss (:meth:`mwm.mae.MaskedAutoencoder.loss`) on ``mae.batch`` x ``mae.length`` frames."""
        m = self.cfg.mae
        batch = sample("mae", m.batch, m.length)
        return self.mae.loss(batch["image"].flatten(0, 1), batch["reward"].flatten(0, 1).float(),
                             self.masking(m.batch, m.length))

    def make_optimizer(self, fused: bool) -> Optimizer:
        return construct(Optimizer, self.cfg.mae, name="mae", params=self.mae.parameters(), fused=fused)

    @torch.no_grad()
    def figure(self, replay) -> Dict[str, np.ndarray]:
        """Input | masked | reconstruction | pasted rows of ``FIGURE_FRAMES`` replay frames."""
        images = torch.as_tensor(replay.sample(1, FIGURE_FRAMES)["image"][0]).to(self.device)  # (F, H, W, C)
        figure = self.mae.reconstruct(images, self.masking(1, FIGURE_FRAMES))
        ratio = f"masked {self.cfg.mae.mask_ratio:.0%}"
        rows = {"input": figure["input"], ratio: figure["masked"], "reconstruction": figure["reconstruction"],
                "pasted": figure["pasted"]}
        return {"mae/input_masked_reconstruction": labelled_grid(rows)}
