"""The representations the probes compare, behind one small interface.

Every method is trained alone on frames (no world model, no policy) and exposes:

- ``loss(batch, generator)``: its own objective on ``image`` (B, T, H, W, C) uint8 and
  ``reward`` (B, T) windows; returns (scalar loss, metrics);
- ``features(images)``: frozen features (N, F) for the linear probes;
- ``reconstruct(images, previous, ratio, generator)``: uint8 ``input``, ``masked`` and
  ``reconstruction`` (N, H, W, C) with ``ratio`` of the tokens removed, or None for a
  method without a decoder (CURL). ``previous`` (N, H, W, C) is each frame's
  predecessor in its episode (SiamMAE's past frame; the others ignore it).

| method | model | masking |
|---|---|---|
| ``mwm`` | :class:`mwm.mae.MaskedAutoencoder`, conv stem | conv-feature tokens |
| ``mae`` | the same with 8x8 pixel patches (``stem=False``) | pixel patches |
| ``simmim`` | pixel patches, mask tokens through the encoder | pixel patches |
| ``siammae`` | :class:`mwm.siammae.SiameseMaskedAutoencoder` | future frame's tokens |
| ``dreamerv2`` | :class:`mwm.conv.ConvEncoder` + :class:`mwm.conv.ConvDecoder` | none |
| ``curl`` | CURL's conv encoder, projection, bilinear InfoNCE (agents/curl) | none (no decoder) |
| ``random`` | ``mwm`` at initialisation, never trained: the floor | conv-feature tokens |

Features: the ViT methods give the cls token and all L tokens of the unmasked frame,
flattened ((1 + L) * D), i.e. everything the MWM world model reads; DreamerV2 its
flattened conv embedding; CURL its conv encoder output (what its RL heads read; one
frame, no frame stack).
"""

from __future__ import annotations

from itertools import chain
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from agents.curl.augment import augment, center_crop
from agents.curl.contrastive import BilinearSimilarity, KeyEncoder, ProjectionHead, ema_update
from agents.curl.encoder import ConvEncoder as CurlEncoder
from agents.curl.losses import contrastive_logits, info_nce_loss
from mwm.config import construct
from mwm.conv import ConvDecoder, ConvEncoder
from mwm.errors import UserError
from mwm.losses.dynamics import image_recon_loss
from mwm.mae import MaskedAutoencoder
from mwm.masking import make_masking
from mwm.optim import Optimizer
from mwm.representations.mae import build_mae
from mwm.representations.pixels import from_unit_range, to_unit_range
from mwm.representations.siammae import build_siammae
from mwm.siammae import SiameseMaskedAutoencoder, check_gaps, frame_pairs

METHODS = ("mwm", "mae", "simmim", "siammae", "dreamerv2", "curl", "random")
MASKED_METHODS = ("mwm", "mae", "simmim", "siammae", "random")  # the mask ratio applies to these
Batch = Dict[str, torch.Tensor]
Figures = Optional[Dict[str, torch.Tensor]]


def method_agent(method: str) -> str:
    """The agent whose config blocks (sizes, optimiser) a method uses."""
    check_method(method)
    return {"dreamerv2": "dreamerv2", "curl": "curl", "siammae": "siammae"}.get(method, "mwm")


def mask_ratio_of(cfg, method: str) -> float:
    """The mask ratio ``method`` trains with: ``siammae.mask_ratio`` (its future frame) for
    SiamMAE, ``mae.mask_ratio`` for the others (unused by those without masking)."""
    return cfg.siammae.mask_ratio if method == "siammae" else cfg.mae.mask_ratio


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"unknown probe method '{method}'; choose one of {', '.join(METHODS)}")


class ProbeMethod(nn.Module):
    """Base of the methods: sampling shape, training switch and the optimiser's parameters."""

    def __init__(self, batch: int, window: int, trains: bool = True):
        super().__init__()
        self.batch = batch  # B: windows per update
        self.window = window  # T: frames per window
        self.trains = trains

    def trainable(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser updates."""
        return self.parameters()

    def after_step(self) -> None:
        """Called after each optimiser step (CURL's momentum encoder)."""


class TokenFeatures:
    """``features``: a masked autoencoder's unmasked tokens, flattened (MAE family and SiamMAE)."""

    model: MaskedAutoencoder

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images).flatten(1)  # (N, (1 + L) * D)


class MaskedAutoencoderMethod(TokenFeatures, ProbeMethod):
    """MWM, pixel-patch MAE, SimMIM and the random floor: one :class:`MaskedAutoencoder`."""

    def __init__(self, model: MaskedAutoencoder, mask_type: str, mask_ratio: float, batch: int, length: int,
                 trains: bool = True):
        super().__init__(batch, length, trains)
        self.model = model
        self.mask_type = mask_type
        self.mask_ratio = mask_ratio

    def loss(self, batch: Batch, generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        images = batch["image"]  # (B, T, H, W, C)
        b, t = images.shape[:2]
        masking = make_masking(self.mask_type, b, t, self.model.num_tokens, self.mask_ratio, images.device, generator)
        return self.model.loss(images.flatten(0, 1), batch["reward"].flatten().float(), masking)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, previous: torch.Tensor, ratio: float,
                    generator: torch.Generator) -> Figures:
        masking = make_masking(self.mask_type, images.shape[0], 1, self.model.num_tokens, ratio, images.device,
                               generator)
        return self.model.reconstruct(images, masking)


class SiamMAEMethod(TokenFeatures, ProbeMethod):
    """SiamMAE on frame pairs (t, t + k): the past frame unmasked, the future masked."""

    def __init__(self, model: SiameseMaskedAutoencoder, mask_type: str, gap_min: int, gap_max: int, batch: int):
        check_gaps(gap_min, gap_max)
        super().__init__(batch, gap_max + 1)
        self.model = model
        self.mask_type = mask_type
        self.gap_min, self.gap_max = gap_min, gap_max

    def loss(self, batch: Batch, generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        pairs = frame_pairs(batch, self.gap_min, self.gap_max, generator)
        n = pairs.future.shape[0]
        masking = make_masking(self.mask_type, n, 1, self.model.num_tokens, self.model.mask_ratio,
                               pairs.future.device, generator)
        return self.model.pair_loss(pairs.past, pairs.future, pairs.future_reward.float(), masking)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, previous: torch.Tensor, ratio: float,
                    generator: torch.Generator) -> Figures:
        n = images.shape[0]
        masking = make_masking(self.mask_type, n, 1, self.model.num_tokens, ratio, images.device, generator)
        figures = self.model.reconstruct_pair(previous, images, masking)
        return {"input": figures["future"], "masked": figures["masked"], "reconstruction": figures["reconstruction"]}


class ConvAutoencoderMethod(ProbeMethod):
    """DreamerV2's CNN encoder and decoder as a plain autoencoder (no masking)."""

    def __init__(self, encoder: ConvEncoder, decoder: ConvDecoder, batch: int, length: int):
        super().__init__(batch, length)
        self.encoder, self.decoder = encoder, decoder

    def loss(self, batch: Batch, generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        inputs = to_unit_range(batch["image"])  # (B, T, C, H, W)
        loss = image_recon_loss(self.decoder(self.encoder(inputs)), inputs).mean()
        return loss, {"dreamerv2/image_loss": loss.detach()}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(to_unit_range(images)[:, None])[:, 0]  # (N, F)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, previous: torch.Tensor, ratio: float,
                    generator: torch.Generator) -> Figures:
        decoded = self.decoder(self.encoder(to_unit_range(images)[:, None]))[:, 0]  # (N, C, H, W)
        return {"input": images, "masked": images, "reconstruction": from_unit_range(decoded)}


class CurlMethod(ProbeMethod):
    """CURL's contrastive objective alone: InfoNCE between two random shifts of each frame,
    queries from the encoder + projection, keys from their momentum copy."""

    def __init__(self, encoder: CurlEncoder, projection: ProjectionHead, latent: int, pad: int, crop: int,
                 logit_scale: float, key_tau: float, batch: int):
        super().__init__(batch, 1)
        self.encoder, self.projection = encoder, projection
        self.key = KeyEncoder(encoder, projection)
        self.similarity = BilinearSimilarity(latent)
        self.pad, self.crop = pad, crop
        self.logit_scale, self.key_tau = logit_scale, key_tau

    def trainable(self) -> Iterator[nn.Parameter]:
        return chain(self.encoder.parameters(), self.projection.parameters(), self.similarity.parameters())

    def loss(self, batch: Batch, generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        x = batch["image"].flatten(0, 1).movedim(-1, 1).float()  # (N, C, H, W) in [0, 255]
        queries = self.projection(self.encoder(augment(x, self.pad, self.crop)))  # (N, latent)
        keys = self.key(augment(x, self.pad, self.crop))  # (N, latent)
        logits = contrastive_logits(queries, keys, self.similarity.weight, self.logit_scale)  # (N, N)
        loss = info_nce_loss(logits).mean()
        accuracy = (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean()
        return loss, {"curl/contrastive_loss": loss.detach(), "curl/accuracy": accuracy}

    def after_step(self) -> None:
        ema_update(self.key.parameters(), chain(self.encoder.parameters(), self.projection.parameters()),
                   self.key_tau)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(center_crop(images.movedim(-1, 1).float(), self.crop))  # (N, F)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, previous: torch.Tensor, ratio: float,
                    generator: torch.Generator) -> Figures:
        return None


# ----------------------------------------------------------------------------- building


def make_method(name: str, cfg, image_shape: Tuple[int, int, int], device: torch.device
                ) -> Tuple[ProbeMethod, Optional[Optimizer]]:
    """Build method ``name`` for images (H, W, C) from the config blocks, with its optimiser
    (None for ``random``, which is never trained)."""
    try:
        return _make_method(name, cfg, image_shape, device)
    except ValueError as exc:  # model code's complaint about a config value
        raise UserError(str(exc)) from None


def _make_method(name: str, cfg, image_shape: Tuple[int, int, int], device: torch.device
                 ) -> Tuple[ProbeMethod, Optional[Optimizer]]:
    check_method(name)
    height, width, channels = image_shape
    if height != width:
        raise UserError(f"probes need square images, got {height}x{width}: set env.size to [64, 64]")
    m = cfg.mae
    fused = cfg.speed.fused_optim and device.type == "cuda"
    if name in ("mwm", "mae", "simmim", "random"):
        model = build_mae(cfg, image_shape, stem=name in ("mwm", "random"), simmim=name == "simmim")
        method: ProbeMethod = MaskedAutoencoderMethod(model, m.mask_type, m.mask_ratio, m.batch, m.length,
                                                      trains=name != "random")
    elif name == "siammae":
        s = cfg.siammae
        model = build_siammae(cfg, image_shape)
        method = SiamMAEMethod(model, m.mask_type, s.gap_min, s.gap_max, s.batch)
    elif name == "dreamerv2":
        encoder = construct(ConvEncoder, cfg.wm, prefix="cnn_", in_channels=channels)
        decoder = construct(ConvDecoder, cfg.wm, prefix="cnn_", feat_dim=encoder.out_dim, out_channels=channels)
        method = ConvAutoencoderMethod(encoder, decoder, m.batch, m.length)
    else:
        c = cfg.curl
        crop = c.crop or height
        encoder = CurlEncoder(channels, crop, c.channels, c.kernels, c.strides)
        method = CurlMethod(encoder, ProjectionHead(encoder.out_dim, c.hidden, c.latent), c.latent, c.pad, crop,
                            c.logit_scale, c.key_tau, c.batch)
    method.to(device)
    if not method.trains:
        return method, None
    if name == "dreamerv2":
        w = cfg.wm
        return method, Optimizer("dreamerv2", method.trainable(), w.lr, w.eps, w.clip, w.wd, 0, fused=fused)
    if name == "curl":
        c = cfg.curl
        return method, Optimizer("curl", method.trainable(), c.lr, c.eps, c.clip, 0.0, 0, fused=fused)
    return method, Optimizer(name, method.trainable(), m.lr, m.eps, m.clip, m.wd, m.warmup, fused=fused)
