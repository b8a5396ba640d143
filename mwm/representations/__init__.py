"""Representation names -> classes (:class:`mwm.representation.Representation`), imported lazily."""

from __future__ import annotations

import importlib

import torch

REPRESENTATIONS = {
    "mae": "mwm.representations.mae:MaskedAutoencoderRepresentation",
    "siammae": "mwm.representations.siammae:SiameseRepresentation",
    "pixels": "mwm.representations.pixels:PixelRepresentation",
}


def make_representation(name: str, cfg, image_shape, device: torch.device):
    """Build the representation ``name`` for images (H, W, C) from the run's config."""
    if name not in REPRESENTATIONS:
        raise ValueError(f"unknown representation '{name}'; choose one of {', '.join(REPRESENTATIONS)}")
    module, cls = REPRESENTATIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, image_shape, device)
