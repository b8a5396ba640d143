"""The convolutional encoder both CURL learners use, and SAC's weight initialisation.

Rainbow (data-efficient, van Hasselt et al. 2019, as in CURL's Atari code): convs 32 and
64 channels, kernels 5 and 5, strides 5 and 5, ReLU: 84x84 -> 16x16 -> 3x3, 576 features.
SAC (CURL's DMC code): four 3x3 convs of 32 filters, stride 2 then 1, ReLU: 84 -> 41 -> 39
-> 37 -> 35, 39200 features. Inputs are float pixels in [0, 255], scaled here to [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn



class ConvEncoder(nn.Module):
    """Convs with ReLU, then flatten: (B, C, H, W) pixels in [0, 255] -> (B, out_dim)."""

    def __init__(self, in_channels: int, image_size: int, channels: Sequence[int], kernels: Sequence[int],
                 strides: Sequence[int]):
        super().__init__()
        if not len(channels) == len(kernels) == len(strides) or not channels:
            raise ValueError(f"curl.channels {list(channels)}, curl.kernels {list(kernels)} and curl.strides "
                            f"{list(strides)} must be non-empty lists of one length")
        layers, size, previous = [], image_size, in_channels
        for out, kernel, stride in zip(channels, kernels, strides):
            layers += [nn.Conv2d(previous, out, kernel, stride=stride), nn.ReLU()]
            size, previous = (size - kernel) // stride + 1, out
            if size < 1:
                raise ValueError(f"curl conv layers (kernels {list(kernels)}, strides {list(strides)}) shrink a "
                                f"{image_size}x{image_size} image to nothing: use smaller kernels or strides")
        self.net = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.image_size = image_size
        self.out_dim = previous * size * size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 255] -> (B, out_dim)."""
        assert images.shape[1:] == (self.in_channels, self.image_size, self.image_size), \
            f"expected (B, {self.in_channels}, {self.image_size}, {self.image_size}), got {tuple(images.shape)}"
        return self.net(images / 255.0).flatten(1)  # (B, out_dim)


def sac_init(module: nn.Module) -> None:
    """CURL's SAC initialisation: orthogonal linear weights, delta-orthogonal convs (ReLU gain), zero biases.

    Delta-orthogonal (Xiao et al., 2018): only the kernel's centre tap is non-zero and
    orthogonal across (out, in) channels. Use with ``module.apply(sac_init)``.
    """
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
        centre = module.weight.shape[2] // 2
        with torch.no_grad():
            tap = torch.empty(module.weight.shape[:2])
            nn.init.orthogonal_(tap, nn.init.calculate_gain("relu"))
            module.weight[:, :, centre, centre] = tap.to(module.weight)
