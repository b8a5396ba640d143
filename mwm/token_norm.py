"""Running standardisation of the autoencoder tokens the MWM world model reads.

The MAE encoder ends in a LayerNorm, so every token has a norm of about sqrt(D)
whatever the frame shows; what changes from frame to frame can be a tiny part of that.
Measured on toy_catch (8 px object, tiny preset, 2000 steps): the tokens' variance
across frames, summed over all (1+L) x D entries, was 0.83 against a mean squared norm
of 2088 (0.04%). A linear probe still read the object's position from the tokens
(R^2 0.99), but the world model's token reconstruction could ignore the object at no
cost, its posterior carried 0.08 nats per step, and its reward head never learned.

With ``wm.token_norm`` on, the world model reads and reconstructs

    x_hat[l, d] = (x[l, d] - mu[l, d]) / s,    s = sqrt(mean_{l,d} var[l, d] + eps)

where mu and var are exponential moving averages (decay ``wm.token_norm_decay``) over
the frames of the world-model batches. Each entry is centred on its own mean (the
static background and position embedding drop out) but all share one scale, so the
entries the frames move most still dominate the loss. Dividing each entry by its own
standard deviation instead amplified near-constant entries' jitter to unit size: the
posterior spent its KL on that noise (2.5-3 nats per step) and open-loop rollouts did
not predict rewards. This is not in the official MWM code (its default here is off);
agents/mwm/README.md lists it among our deviations. With a trained autoencoder the
tokens move far more: after 1000 autoencoder updates on toy_catch (16 px object) their
variance across frames was 25% of their mean square, so the measurement above
describes an autoencoder that has barely started to train.
"""

import torch
from torch import nn

from mwm import distributed

EPS = 1e-8  # keeps the scale finite before any variance is seen


class TokenStandardizer(nn.Module):
    """Running per-entry mean and variance of tokens (..., L, D); centre and scale, and invert.

    Args:
        num_tokens: L, tokens per frame (cls included).
        dim: D, token width.
        decay: EMA decay of the statistics per update (the first update sets them).
    """

    def __init__(self, num_tokens: int, dim: int, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.register_buffer("mean", torch.zeros(num_tokens, dim))
        self.register_buffer("var", torch.ones(num_tokens, dim))
        self.register_buffer("count", torch.zeros(()))

    @torch.no_grad()
    def update(self, tokens: torch.Tensor) -> None:
        """Fold a batch of tokens (..., L, D) into the statistics, on the device, no host sync."""
        flat = tokens.detach().float().reshape(-1, *self.mean.shape)  # (N, L, D)
        mean, var = distributed.batch_moments(flat)  # (L, D) each; over every rank's batch (torchrun)
        # weight of the new batch: 1 on the first update, 1 - decay afterwards
        new = torch.where(self.count > 0, 1.0 - self.decay, 1.0)
        delta = mean - self.mean
        self.mean.add_(new * delta)
        self.var.mul_(1.0 - new).add_(new * (var + (1.0 - new) * delta ** 2))
        self.count.add_(1.0)

    def scale(self) -> torch.Tensor:
        """() the one divisor: the root of the mean variance over all (L, D) entries."""
        return torch.sqrt(self.var.mean() + EPS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., L, D) -> centred per entry, divided by one global scale; same shape and dtype."""
        return ((tokens - self.mean) / self.scale()).to(tokens.dtype)

    def inverse(self, standardised: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`forward`: (..., L, D) -> tokens in the autoencoder's units."""
        return (standardised * self.scale() + self.mean).to(standardised.dtype)
