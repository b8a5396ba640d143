"""CURL's contrastive parts: the Atari projection head, the bilinear W, EMA target updates."""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """CURL Atari's contrastive head: linear -> LayerNorm -> ReLU -> linear -> LayerNorm, (B, F) -> (B, latent).

    As in CURL's Atari code, the LayerNorms have no learned gain or bias and the linear
    weights start uniform in [0, 1) (biases 0).
    """

    def __init__(self, in_dim: int, hidden: int, latent: int):
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, latent)
        self.norm_hidden = nn.LayerNorm(hidden, elementwise_affine=False)
        self.norm_out = nn.LayerNorm(latent, elementwise_affine=False)
        for layer in (self.hidden, self.out):
            nn.init.uniform_(layer.weight, 0.0, 1.0)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm_hidden(self.hidden(features)))  # (B, hidden)
        return self.norm_out(self.out(h))  # (B, latent)


class BilinearSimilarity(nn.Module):
    """The learned W of sim(q, k) = q^T W k (CURL Sec. 4.4), initialised uniform in [0, 1) as in CURL's code."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(dim, dim))


class KeyEncoder(nn.Module):
    """The momentum (key) encoder: frozen copies of a query encoder's modules, applied in order.

    Never trained by gradients; :func:`ema_update` moves it towards the query modules.
    """

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(m) for m in modules)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


@torch.no_grad()
def ema_update(target: Iterable[torch.Tensor], source: Iterable[torch.Tensor], tau: float) -> None:
    """``theta_target <- (1 - tau) theta_target + tau theta_source`` for paired tensors, in order.

    CURL's key encoder is an EMA of the query encoder (MoCo, He et al. 2020): tau = 1 -
    momentum = 0.001 on Atari, 0.05 for the DMC encoder; SAC's target critics use 0.01.
    """
    target, source = list(target), list(source)
    assert len(target) == len(source), f"EMA target has {len(target)} tensors, source {len(source)}"
    for t, s in zip(target, source):
        assert t.shape == s.shape, f"EMA pairs {tuple(t.shape)} with {tuple(s.shape)}"
        t.lerp_(s, tau)
