"""Frame stacks in torch: the policy's per-env stack of the last k frames, and channel folding.

The replay side (:mod:`replay.transitions`) builds the same stacks from stored
episodes; both repeat an episode's first frame until k frames exist.
"""

from __future__ import annotations

from typing import Optional

import torch


def push_frame(stack: Optional[torch.Tensor], image: torch.Tensor, is_first: torch.Tensor,
               history: int) -> torch.Tensor:
    """Append ``image`` (N, H, W, C) to ``stack`` (N, k, H, W, C); envs with ``is_first`` (N,) restart.

    A restarted env (or ``stack=None``) holds k copies of its current frame.
    """
    fresh = image[:, None].expand(-1, history, *image.shape[1:])  # (N, k, H, W, C)
    if stack is None:
        return fresh.clone()
    shifted = torch.cat([stack[:, 1:], image[:, None]], dim=1)  # (N, k, H, W, C)
    restart = is_first.to(torch.bool).view(-1, 1, 1, 1, 1)
    return torch.where(restart, fresh, shifted)


def to_channels(frames: torch.Tensor) -> torch.Tensor:
    """(B, k, H, W, C) -> (B, k*C, H, W), the oldest frame's channels first."""
    b, k, h, w, c = frames.shape
    return frames.permute(0, 1, 4, 2, 3).reshape(b, k * c, h, w)  # (B, k*C, H, W)
