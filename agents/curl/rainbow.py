"""Data-efficient Rainbow's network (van Hasselt et al., 2019) with CURL's contrastive head.

Conv encoder -> two streams of factorised noisy linear layers (dueling, Wang et al.
2016) giving a C51 distribution over ``atoms`` returns per action, plus CURL's
projection head on the same conv features.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from agents.curl.contrastive import ProjectionHead
from agents.curl.encoder import ConvEncoder


class NoisyLinear(nn.Module):
    """Linear layer with factorised Gaussian weight noise (Fortunato et al., 2018, Sec. 3.2).

    y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b with eps_w = f(eps_out) f(eps_in)^T,
    f(x) = sign(x) sqrt(|x|). mu ~ U(-1/sqrt(in), 1/sqrt(in)); sigma_w = sigma0 / sqrt(in),
    sigma_b = sigma0 / sqrt(out) (as in CURL's code; Rainbow's sigma0 0.5, data-efficient 0.1).
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), sigma0 / math.sqrt(in_features)))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma0 / math.sqrt(out_features)))
        self.register_buffer("weight_eps", torch.zeros(out_features, in_features))
        self.register_buffer("bias_eps", torch.zeros(out_features))
        self.reset_noise()

    @staticmethod
    def _scaled_noise(size: int, device: torch.device) -> torch.Tensor:
        x = torch.randn(size, device=device)
        return x.sign() * x.abs().sqrt()

    @torch.no_grad()
    def reset_noise(self) -> None:
        """Draw new factorised noise."""
        eps_in = self._scaled_noise(self.in_features, self.weight_mu.device)
        eps_out = self._scaled_noise(self.out_features, self.weight_mu.device)
        self.weight_eps.copy_(torch.outer(eps_out, eps_in))
        self.bias_eps.copy_(eps_out)

    def forward(self, x: torch.Tensor, noisy: bool = True) -> torch.Tensor:
        """With ``noisy=False`` the layer uses its means only (greedy evaluation)."""
        if not noisy:
            return F.linear(x, self.weight_mu, self.bias_mu)
        return F.linear(x, self.weight_mu + self.weight_sigma * self.weight_eps,
                        self.bias_mu + self.bias_sigma * self.bias_eps)


class DuelingDistributionalHead(nn.Module):
    """Value and advantage streams of noisy layers -> log-probabilities (B, A, atoms).

    Dueling C51 (Rainbow eq. in Sec. 3): logits_a = v + adv_a - mean_a' adv_a', then a
    softmax over atoms for each action.
    """

    def __init__(self, in_dim: int, hidden: int, num_actions: int, atoms: int, sigma0: float):
        super().__init__()
        self.num_actions, self.atoms = num_actions, atoms
        self.value_hidden = NoisyLinear(in_dim, hidden, sigma0)
        self.value_out = NoisyLinear(hidden, atoms, sigma0)
        self.adv_hidden = NoisyLinear(in_dim, hidden, sigma0)
        self.adv_out = NoisyLinear(hidden, num_actions * atoms, sigma0)

    def forward(self, features: torch.Tensor, noisy: bool = True) -> torch.Tensor:
        value = self.value_out(F.relu(self.value_hidden(features, noisy)), noisy)  # (B, atoms)
        adv = self.adv_out(F.relu(self.adv_hidden(features, noisy)), noisy)  # (B, A * atoms)
        value = value.view(-1, 1, self.atoms)  # (B, 1, atoms)
        adv = adv.view(-1, self.num_actions, self.atoms)  # (B, A, atoms)
        return F.log_softmax(value + adv - adv.mean(1, keepdim=True), dim=-1)  # (B, A, atoms)

    def reset_noise(self) -> None:
        for layer in (self.value_hidden, self.value_out, self.adv_hidden, self.adv_out):
            layer.reset_noise()


class RainbowNetwork(nn.Module):
    """Online (or target) network: conv encoder, dueling C51 head, CURL projection head.

    ``encoder`` maps (B, k*C, H, W) pixels in [0, 255] to features (B, F); ``head`` gives
    log-probabilities (B, A, atoms); ``projection`` gives CURL queries (B, latent).
    """

    def __init__(self, in_channels: int, image_size: int, num_actions: int, channels: Sequence[int],
                 kernels: Sequence[int], strides: Sequence[int], hidden: int, atoms: int, sigma0: float,
                 latent: int):
        super().__init__()
        self.encoder = ConvEncoder(in_channels, image_size, channels, kernels, strides)
        self.head = DuelingDistributionalHead(self.encoder.out_dim, hidden, num_actions, atoms, sigma0)
        self.projection = ProjectionHead(self.encoder.out_dim, hidden, latent)

    def log_probs(self, images: torch.Tensor, noisy: bool = True) -> torch.Tensor:
        """(B, k*C, H, W) -> log-probabilities over atoms (B, A, atoms)."""
        return self.head(self.encoder(images), noisy)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """(B, k*C, H, W) -> CURL query embeddings (B, latent)."""
        return self.projection(self.encoder(images))

    def reset_noise(self) -> None:
        self.head.reset_noise()


def expected_q(log_probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Q(s, a) = sum_j z_j p_j(s, a): (B, A, atoms) log-probabilities -> (B, A)."""
    return (log_probs.exp() * support).sum(-1)
