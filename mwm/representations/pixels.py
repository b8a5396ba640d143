"""DreamerV2's representation: none. The world model reads and reconstructs pixels.

Images are scaled to [-0.5, 0.5]; the world model's encoder is DreamerV2's conv
encoder (depth ``wm.cnn_depth``, kernels 4, stride 2) and its decoder the transposed
convolutions back to the image (Hafner et al., 2021).
"""

from __future__ import annotations

import torch

from mwm.config import construct
from mwm.conv import ConvDecoder, ConvEncoder
from mwm.representation import Representation


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float (..., C, H, W) in [-0.5, 0.5] (DreamerV2)."""
    return images.movedim(-1, -3).float() / 255.0 - 0.5


def from_unit_range(inputs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_unit_range`, rounded and clipped: float (..., C, H, W) -> uint8 (..., H, W, C)."""
    return ((inputs + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)


class PixelRepresentation(Representation):
    """Pixels as they are: nothing to train, every prediction decodes."""

    name = "pixels"

    def world_model_io(self, feat_dim: int):
        channels = self.image_shape[-1]
        encoder = construct(ConvEncoder, self.cfg.wm, prefix="cnn_", in_channels=channels)
        decoder = construct(ConvDecoder, self.cfg.wm, prefix="cnn_", feat_dim=feat_dim, out_channels=channels)
        return encoder, decoder, encoder.out_dim

    def inputs(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        return to_unit_range(images)  # (B, T, C, H, W)

    def to_images(self, inputs: torch.Tensor) -> torch.Tensor:
        return from_unit_range(inputs)  # (B, T, H, W, C)
