"""Image -> token embeddings, and the pixel standardisation both sides share.

:class:`ConvStem` is MWM's "early convolution" (Seo et al., 2022; Xiao et al., 2021):
three stride-2 convolutions then a 1x1 projection, so masking acts on CNN feature
cells. :class:`PatchEmbed` is the pixel ablation (plain ViT patches). For 64x64 input
both give 8x8 = 64 tokens.
"""

from collections.abc import Sequence

import torch
from torch import nn


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) for standardising: ImageNet's for RGB, tiled for stacked
    RGB frames (C a multiple of 3), and the mean of the three for grayscale (C = 1)."""
    if channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    if channels % 3 == 0:
        return IMAGENET_MEAN * (channels // 3), IMAGENET_STD * (channels // 3)
    raise ValueError(f"images have {channels} channels; use 1 (grayscale) or a multiple of 3 (RGB)")


def _stats_tensors(channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (C, 1, 1) float tensors on ``like``'s device."""
    mean, std = channel_stats(channels)
    shape = (channels, 1, 1)
    return (
        torch.tensor(mean, dtype=torch.float32, device=like.device).view(shape),
        torch.tensor(std, dtype=torch.float32, device=like.device).view(shape),
    )


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., H, W, C) -> standardised float (..., C, H, W): /255, then
    (x - mean) / std with ImageNet statistics (official MWM code).

    Computed as one fused multiply-add over the contiguous channel-last data,
    x * (1 / (255 std)) - mean / std, and returned as a channel-first view with
    channel-last strides, which the convolutions read directly (on one CPU thread this
    took 21 ms instead of 127 ms for 256 frames of 64x64x3; equal to 5e-7).
    """
    mean, std = _stats_tensors(images.shape[-1], images)
    scale, shift = (1.0 / (255.0 * std)).flatten(), (-mean / std).flatten()  # (C,) each
    return torch.addcmul(shift, images.float(), scale).movedim(-1, -3)  # (..., C, H, W)


def deprocess(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`preprocess` for figures: float (..., C, H, W) -> uint8 (..., H, W, C)."""
    mean, std = _stats_tensors(x.shape[-3], x)
    pixels = (x * std + mean).mul(255.0).round().clamp(0, 255)  # (..., C, H, W)
    return pixels.to(torch.uint8).movedim(-3, -1)  # (..., H, W, C)


def tokens_from_map(features: torch.Tensor) -> torch.Tensor:
    """Feature map (N, D, h, w) -> tokens (N, h * w, D) in row-major order."""
    return features.flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """Early convolutions: conv(k4, s2, p1) + ReLU per entry of ``channels``, then a 1x1
    conv to ``width``. 64x64 -> 32 -> 16 -> 8: (N, C, 64, 64) -> tokens (N, 64, width)."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128), width: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for out in channels:
            layers += [nn.Conv2d(previous, out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            previous = out
        layers.append(nn.Conv2d(previous, width, kernel_size=1))
        self.net = nn.Sequential(*layers)
        self.downsample = 2 ** len(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised images (N, C, H, W) -> tokens (N, (H/8) * (W/8), width)."""
        return tokens_from_map(self.net(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` pixel patches, linearly embedded (ViT).

    Initialised like MAE: the conv weight is xavier-uniform over its flattened view.
    """

    def __init__(self, in_channels: int, patch: int = 8, width: int = 256):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        nn.init.xavier_uniform_(self.proj.weight.view(width, -1))
        nn.init.zeros_(self.proj.bias)
        self.downsample = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised images (N, C, H, W) -> tokens (N, (H/p) * (W/p), width)."""
        return tokens_from_map(self.proj(x))
