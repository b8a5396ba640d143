"""Image augmentations of CURL: random shift (Atari), random and centre crops (DMC).

All functions take channels-first batches ``(B, C, H, W)``; a frame stack is already
folded into C, so one crop covers every frame of a stack (CURL's "same crop over the
frame stack"). Each sample gets its own offsets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_at(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample ``size`` x ``size`` windows at offsets ``top``, ``left`` (B,): (B, C, size, size)."""
    batch = images.shape[0]
    span = torch.arange(size, device=images.device)
    rows = (top[:, None] + span)[:, :, None]  # (B, size, 1)
    cols = (left[:, None] + span)[:, None, :]  # (B, 1, size)
    picked = images[torch.arange(batch, device=images.device)[:, None, None], :, rows, cols]  # (B, size, size, C)
    return picked.permute(0, 3, 1, 2)  # (B, C, size, size)


def random_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """A uniformly placed ``size`` x ``size`` crop of each image (CURL, DMC: 100 -> 84)."""
    batch, _, height, width = images.shape
    if size > height or size > width:
        raise ValueError(f"crop size {size} exceeds the images {height}x{width}")
    top = torch.randint(0, height - size + 1, (batch,), device=images.device)
    left = torch.randint(0, width - size + 1, (batch,), device=images.device)
    return crop_at(images, top, left, size)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window (what CURL's DMC policy sees); a no-op at equal size."""
    height, width = images.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top:top + size, left:left + size]


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by ``pad`` pixels (edge replication) and crop back to the input size at a random offset.

    CURL's Atari augmentation for 84x84 frames (pad 4); ``images`` must be float.
    """
    if pad == 0:
        return images
    height, width = images.shape[-2:]
    if height != width:
        raise ValueError(f"random_shift expects square images, got {height}x{width}")
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")  # (B, C, H+2p, W+2p)
    return random_crop(padded, height)


def augment(images: torch.Tensor, pad: int, size: int) -> torch.Tensor:
    """CURL's training augmentation: random shift by ``pad``, then a random ``size`` crop if smaller."""
    images = random_shift(images, pad)
    return images if images.shape[-1] == size else random_crop(images, size)
