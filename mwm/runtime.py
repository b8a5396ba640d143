"""Process-level set-up shared by the entry points: devices, seeding, schedules."""

from __future__ import annotations

import random

import numpy as np
import torch

from mwm.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; a device that is not there is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"'{name}' is not a device: use --device auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' is not available (no CUDA GPU visible to torch): use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA devices): "
                            "use --device cuda:0")
    elif device.type != "cpu":
        raise UserError(f"device type '{device.type}' is not supported: use --device auto, cpu or cuda")
    return device


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch (CPU and CUDA); envs get it separately."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Every:
    """Fires once each time a counter crosses a multiple of ``every`` (0: never).

    The counter may advance by more than one at a time (N parallel envs); the schedule
    depends only on the counter's value, so it survives a resume.
    """

    def __init__(self, every: int, start: int = 0):
        self.every = every
        self.last = start // every if every else 0

    def __call__(self, step: int) -> bool:
        if not self.every:
            return False
        bucket = step // self.every
        if bucket > self.last:
            self.last = bucket
            return True
        return False
