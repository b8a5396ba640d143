"""DreamerV2 from pixels: the world model reads and reconstructs images with CNNs.

The RSSM, heads, actor-critic and update are MWM's (agents/world_model_agent.py);
only the observation model differs: DreamerV2's conv encoder (depth 48, kernels 4,
stride 2) and transposed-conv decoder on images scaled to [-0.5, 0.5].
"""

from __future__ import annotations

import torch

from agents.world_model_agent import WorldModelAgent
from mwm.conv import ConvDecoder, ConvEncoder


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float (..., C, H, W) in [-0.5, 0.5] (DreamerV2)."""
    return images.movedim(-1, -3).float() / 255.0 - 0.5


class DreamerV2Agent(WorldModelAgent):
    """DreamerV2 with discrete latents; see agents/dreamerv2/README.md."""

    def build_observation_model(self, cfg, image_shape, feat_dim):
        channels = image_shape[-1]
        encoder = ConvEncoder(channels, cfg.wm.cnn_depth)
        decoder = ConvDecoder(feat_dim, channels, cfg.wm.cnn_depth)
        return encoder, decoder, encoder.out_dim

    def wm_inputs(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        return to_unit_range(images)  # (B, T, C, H, W)

    def inputs_to_images(self, inputs: torch.Tensor) -> torch.Tensor:
        images = ((inputs + 0.5) * 255.0).clamp(0, 255).to(torch.uint8)  # (B, T, C, H, W)
        return images.movedim(-3, -1)  # (B, T, H, W, C)
