"""Reconstruction metrics: does the autoencoder keep the small object?

All functions take uint8 images (N, H, W, C) and score in [0, 1] pixel units (x / 255):

- :func:`frame_mse`: mean squared error over the whole frame.
- :func:`box_mse`: mean squared error inside the object's box only. A 1-pixel ball is
  0.02% of a 64x64 frame, so it barely moves the frame MSE; inside its box it dominates.
- :func:`object_visible`: is the object still there in the reconstruction? The
  background colour is the median of a ``ring`` of pixels around the box in the input;
  the object's pixels are the box pixels whose colour differs from it by more than
  ``threshold`` in some channel. A pixel is recovered when the reconstruction is within
  half the pixel's contrast of its true colour (Euclidean over channels:
  |recon - input| < |input - background| / 2), so an erased object (recon = background)
  and a grey blur fail while a faithful or slightly faded one passes. The object is
  visible when at least half of its pixels are recovered *and* the reconstruction of the
  ring around it is faithful too (median |recon - input| over the ring below half the
  object's median contrast): noise that happens to hit the object's colour in one pixel
  does not count. Frames whose input shows no object pixel (the object blends in, or is
  hidden) score NaN and are left out of the fraction.
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np

from mwm.probes.annotations import Labels

RECOVERED_FRACTION = 0.5  # share of object pixels that must be recovered to call it visible
CONTRAST_SHARE = 0.5  # a pixel is recovered within this share of its contrast to the background


def _unit(images: np.ndarray) -> np.ndarray:
    """uint8 (..., C) -> float32 in [0, 1]."""
    return np.asarray(images, np.float32) / 255.0


def frame_mse(recon: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame MSE over all pixels and channels, (N,)."""
    return ((_unit(recon) - _unit(target)) ** 2).mean(axis=(1, 2, 3))


def box_mse(recon: np.ndarray, target: np.ndarray, boxes: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per-frame MSE inside ``boxes`` (N, 4) = (top, left, bottom, right), (N,); NaN where
    the object is absent (``present`` False) or the box is empty."""
    out = np.full(len(target), np.nan, np.float32)
    for i in np.nonzero(present)[0]:
        top, left, bottom, right = boxes[i]
        if bottom > top and right > left:
            diff = _unit(recon[i, top:bottom, left:right]) - _unit(target[i, top:bottom, left:right])
            out[i] = float((diff ** 2).mean())
    return out


def ring_pixels(image: np.ndarray, box: np.ndarray, ring: int) -> np.ndarray:
    """Colours (M, C) in [0, 1] of the pixels within ``ring`` pixels around ``box`` but
    outside it (clipped at the frame's edges); M = 0 when the box fills the frame."""
    height, width = image.shape[:2]
    top, left, bottom, right = (int(v) for v in box)
    row0, col0 = max(top - ring, 0), max(left - ring, 0)  # the ring's top-left corner, clipped
    outer = image[row0:min(bottom + ring, height), col0:min(right + ring, width)]
    keep = np.ones(outer.shape[:2], bool)
    keep[top - row0:bottom - row0, left - col0:right - col0] = False  # the box itself is not background
    return _unit(outer[keep])  # (M, C)


def background_colour(image: np.ndarray, box: np.ndarray, ring: int) -> np.ndarray:
    """Median colour (C,) of :func:`ring_pixels`; NaN when there are none."""
    pixels = ring_pixels(image, box, ring)  # (M, C)
    if pixels.shape[0] == 0:
        return np.full(image.shape[-1], np.nan, np.float32)
    return np.median(pixels, axis=0)


def object_visible(recon: np.ndarray, target: np.ndarray, boxes: np.ndarray, present: np.ndarray,
                   threshold: float, ring: int = 2) -> np.ndarray:
    """1.0 where the object is visible in ``recon``, 0.0 where it is lost, NaN where the
    input shows no object (see the module docstring), (N,)."""
    out = np.full(len(target), np.nan, np.float32)
    for i in np.nonzero(present)[0]:
        top, left, bottom, right = boxes[i]
        if bottom <= top or right <= left:
            continue
        around = ring_pixels(target[i], boxes[i], ring)  # (M, C)
        if around.shape[0] == 0:
            continue
        background = np.median(around, axis=0)  # (C,)
        shown = _unit(target[i, top:bottom, left:right])  # (h, w, C)
        object_pixels = np.abs(shown - background).max(axis=-1) > threshold  # (h, w)
        if not object_pixels.any():
            continue
        rebuilt = _unit(recon[i, top:bottom, left:right])  # (h, w, C)
        error = np.linalg.norm(rebuilt - shown, axis=-1)  # (h, w)
        contrast = np.linalg.norm(shown - background, axis=-1)  # (h, w)
        recovered = (error < CONTRAST_SHARE * contrast)[object_pixels]
        ring_error = np.median(np.linalg.norm(ring_pixels(recon[i], boxes[i], ring) - around, axis=-1))
        faithful = ring_error < CONTRAST_SHARE * np.median(contrast[object_pixels])
        out[i] = float(faithful and recovered.mean() >= RECOVERED_FRACTION)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def reconstruction_metrics(recon: np.ndarray, target: np.ndarray, labels: Labels, threshold: float,
                           ring: int = 2) -> Dict[str, float]:
    """``frame_mse``, ``box_mse`` and ``visible`` (the fraction of frames whose object is
    still visible) averaged over frames, plus ``object_frames``, the frames that count
    towards ``visible``."""
    visible = object_visible(recon, target, labels.boxes, labels.present, threshold, ring)
    return {
        "frame_mse": float(frame_mse(recon, target).mean()),
        "box_mse": _nanmean(box_mse(recon, target, labels.boxes, labels.present)),
        "visible": _nanmean(visible),
        "object_frames": float(np.count_nonzero(~np.isnan(visible))),
    }
