"""CURL's SAC networks for continuous control (CURL's DMC code, after SAC-AE, Yarats et al. 2019).

The actor and the critic each have a :class:`PixelEncoder` (conv trunk -> linear 50 ->
LayerNorm); the two encoders share one conv trunk (tied weights) but keep their own
linear and LayerNorm. Only the critic and the contrastive loss train the trunk: the
actor reads it under stop-gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from agents.curl.encoder import ConvEncoder


class PixelEncoder(nn.Module):
    """A conv trunk (possibly shared) -> linear ``feature_dim`` -> LayerNorm: (B, C, H, W) -> (B, feature_dim)."""

    def __init__(self, trunk: ConvEncoder, feature_dim: int):
        super().__init__()
        self.trunk = trunk
        self.fc = nn.Linear(trunk.out_dim, feature_dim)
        self.norm = nn.LayerNorm(feature_dim)
        self.feature_dim = feature_dim

    def forward(self, images: torch.Tensor, detach_trunk: bool = False) -> torch.Tensor:
        features = self.trunk(images)  # (B, F)
        if detach_trunk:
            features = features.detach()
        return self.norm(self.fc(features))  # (B, feature_dim)


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Two hidden ReLU layers (CURL: 1024 units)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy; log std squashed into [log_std_min, log_std_max] (CURL: -10, 2)."""

    def __init__(self, encoder: PixelEncoder, action_dim: int, hidden: int, log_std_min: float,
                 log_std_max: float):
        super().__init__()
        self.encoder = encoder
        self.trunk = mlp(encoder.feature_dim, hidden, 2 * action_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, images: torch.Tensor, detach_trunk: bool = True):
        """(B, C, H, W) -> pre-tanh mean (B, A) and log std (B, A); the conv trunk is detached by default."""
        mu, log_std = self.trunk(self.encoder(images, detach_trunk)).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        return mu, log_std


def squashed_gaussian_sample(mu: torch.Tensor, log_std: torch.Tensor):
    """a = tanh(u), u = mu + std * eps (reparameterised); returns a (B, A) and log pi(a|s) (B,).

    SAC Appendix C: log pi(a|s) = log N(u; mu, std) - sum_i log(1 - tanh(u_i)^2), the
    correction written stably as 2 (log 2 - u - softplus(-2u)).
    """
    noise = torch.randn_like(mu)
    u = mu + noise * log_std.exp()
    log_normal = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)  # (B,)
    correction = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)  # (B,)
    return torch.tanh(u), log_normal - correction


class QFunction(nn.Module):
    """Q(s, a) from encoder features and an action: (B, F), (B, A) -> (B,)."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(feature_dim + action_dim, hidden, 1)

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features, action], dim=-1)).squeeze(-1)  # (B,)


class Critic(nn.Module):
    """Two Q functions on one pixel encoder (clipped double Q)."""

    def __init__(self, encoder: PixelEncoder, action_dim: int, hidden: int):
        super().__init__()
        self.encoder = encoder
        self.q1 = QFunction(encoder.feature_dim, action_dim, hidden)
        self.q2 = QFunction(encoder.feature_dim, action_dim, hidden)

    def forward(self, images: torch.Tensor, action: torch.Tensor, detach_trunk: bool = False):
        """(B, C, H, W), (B, A) -> Q1 (B,), Q2 (B,)."""
        features = self.encoder(images, detach_trunk)  # (B, feature_dim)
        return self.q1(features, action), self.q2(features, action)
