"""The one thing the Dreamer-family agents differ in: what the world model reads.

A :class:`Representation` turns uint8 frames into the world model's inputs, supplies
the world model's encoder and decoder for those inputs, and may train itself beside the
world model with its own objective and optimiser:

| name | agent | world model reads | trains |
|---|---|---|---|
| ``mae`` | mwm | the masked autoencoder's tokens (mwm/representations/mae.py) | MAE loss |
| ``siammae`` | siammae | the Siamese MAE's tokens (mwm/representations/siammae.py) | SiamMAE loss |
| ``pixels`` | dreamerv2 | pixels in [-0.5, 0.5] (mwm/representations/pixels.py) | no |

:class:`agents.world_model_agent.WorldModelAgent` composes one with the world model
and the actor-critic; the registry is :data:`mwm.representations.REPRESENTATIONS`.
Adding one is a new module with a subclass and one registry line (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from mwm.optim import Optimizer

Metrics = Dict[str, Any]
# sample(stream, batch, length) -> the next (B, T) replay batch of that named stream
Sampler = Callable[[str, int, int], Dict[str, torch.Tensor]]


class Representation(nn.Module, abc.ABC):
    """Frames -> world-model inputs; see the module docstring.

    ``cfg`` is the run's config, ``image_shape`` (H, W, C). Subclasses set ``name`` (its
    optimiser's and metrics' prefix) and implement :meth:`world_model_io` and
    :meth:`inputs`; a trained one implements :meth:`loss` and :meth:`make_optimizer`,
    one that can show the world model's predictions as pixels :meth:`to_images`.
    """

    name: str = ""

    def __init__(self, cfg, image_shape: Tuple[int, int, int], device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.image_shape = tuple(image_shape)
        self.device = device

    @abc.abstractmethod
    def world_model_io(self, feat_dim: int) -> Tuple[nn.Module, nn.Module, int]:
        """(encoder, decoder, embed_dim) of the world model over :meth:`inputs`; the decoder
        maps RSSM features (B, T, feat_dim) back to inputs and has ``loss(pred, target)``."""

    @abc.abstractmethod
    def inputs(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """uint8 images (B, T, H, W, C) -> world-model inputs (B, T, ...), without gradient
        into the representation. ``train`` marks the world-model update's batch (running
        input statistics may be updated there), not acting or figures."""

    @property
    def trains(self) -> bool:
        """Whether this representation has an objective of its own (:meth:`loss`)."""
        return type(self).loss is not Representation.loss

    @property
    def decodes(self) -> bool:
        """Whether world-model inputs can be shown as pixels (:meth:`to_images`)."""
        return type(self).to_images is not Representation.to_images

    def to_images(self, inputs: torch.Tensor) -> torch.Tensor:
        """World-model inputs or predictions (B, T, ...) -> uint8 images (B, T, H, W, C)."""
        raise NotImplementedError(f"the {self.name} representation cannot turn its inputs into images")

    def loss(self, sample: Sampler) -> Tuple[torch.Tensor, Metrics]:
        """Its own objective on batches it draws with ``sample``: (scalar loss, metrics)."""
        raise NotImplementedError(f"the {self.name} representation has no objective of its own")

    def make_optimizer(self, fused: bool) -> Optional[Optimizer]:
        """The optimiser of :meth:`loss` (None for a representation that does not train)."""
        return None

    def figure(self, replay) -> Dict[str, np.ndarray]:
        """Its TensorBoard figures from ``replay``, uint8 (H, W, C); none by default."""
        return {}
