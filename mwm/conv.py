"""DreamerV2's pixel encoder and decoder (Hafner et al., 2021, Appendix; MWM's pixel ablation).

Both take and return sequences of 64x64 images, (B, T, C, 64, 64), float, preprocessed
by the caller (DreamerV2: x / 255 - 0.5). The decoder outputs the mean of a
unit-variance Gaussian; its loss is :func:`mwm.losses.dynamics.image_recon_loss`.
"""

import torch
from torch import nn

from mwm.losses.dynamics import image_recon_loss

IMAGE_SIZE = 64
# DreamerV2's transposed-conv kernels take a 1x1 map to 64x64: 1 -> 5 -> 13 -> 30 -> 64.
DECODER_KERNELS = (5, 5, 6, 6)


class ConvEncoder(nn.Module):
    """Strided convs (stride 2, no padding, ELU), channels ``depth * 2**i``, then flatten.

    With DreamerV2's defaults (depth 48, kernels 4, 4, 4, 4) a 64x64 image becomes
    384 x 2 x 2 = 1536 features. ``out_dim`` holds the embedding size.
    """

    def __init__(self, in_channels: int, depth: int = 48, kernels: tuple[int, ...] = (4, 4, 4, 4)):
        super().__init__()
        layers = []
        channels, size = in_channels, IMAGE_SIZE
        for i, kernel in enumerate(kernels):
            layers += [nn.Conv2d(channels, depth * 2**i, kernel, stride=2), nn.ELU()]
            channels, size = depth * 2**i, (size - kernel) // 2 + 1
        if size < 1:
            raise ValueError(f"conv kernels {kernels} shrink a {IMAGE_SIZE}x{IMAGE_SIZE} image to nothing; "
                            "use fewer or smaller kernels")
        self.net = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.out_dim = channels * size * size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, T, C, 64, 64) -> (B, T, out_dim)."""
        lead = image.shape[:-3]
        expected = (self.in_channels, IMAGE_SIZE, IMAGE_SIZE)
        if image.shape[-3:] != expected:
            raise ValueError(f"ConvEncoder expects images (..., C, H, W) = (..., {expected[0]}, 64, 64), "
                            f"got {tuple(image.shape)}; resize the observations to 64x64 with that many channels")
        x = self.net(image.reshape(-1, *image.shape[-3:]))  # (B*T, C', h, w)
        return x.reshape(*lead, self.out_dim)  # (B, T, out_dim)


class ConvDecoder(nn.Module):
    """Linear to a 1x1 map of ``32 * depth`` channels, then transposed convs to 64x64.

    Channels 4d, 2d, d, out_channels with kernels 5, 5, 6, 6, stride 2, ELU between
    (none after the last): DreamerV2's image decoder.
    """

    def __init__(self, feat_dim: int, out_channels: int, depth: int = 48):
        super().__init__()
        self.start_channels = 32 * depth
        self.project = nn.Linear(feat_dim, self.start_channels)
        widths = (4 * depth, 2 * depth, depth, out_channels)
        layers = []
        channels = self.start_channels
        for i, (width, kernel) in enumerate(zip(widths, DECODER_KERNELS)):
            layers.append(nn.ConvTranspose2d(channels, width, kernel, stride=2))
            if i < len(widths) - 1:
                layers.append(nn.ELU())
            channels = width
        self.net = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, T, C, 64, 64) image means."""
        lead = feat.shape[:-1]
        x = self.project(feat).reshape(-1, self.start_channels, 1, 1)  # (B*T, 32d, 1, 1)
        x = self.net(x)  # (B*T, C, 64, 64)
        return x.reshape(*lead, self.out_channels, IMAGE_SIZE, IMAGE_SIZE)

    channel_dim = -3  # of the target (B, T, C, H, W): change weights are per pixel (wm.recon_weight)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction loss (B, T) of decoded ``pred`` against the input images; ``weight``
        (B, T, H, W) per pixel or None (uniform)."""
        return image_recon_loss(pred, target, weight)
