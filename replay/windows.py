"""Choosing fixed-length windows inside episodes, vectorised over the batch."""

from typing import Tuple

import numpy as np


def window_weights(lengths: np.ndarray, length: int, prioritize_ends: bool) -> np.ndarray:
    """How many start slots each episode offers to a window of ``length`` steps.

    Uniform: an episode of ``L >= length`` steps has ``L - length + 1`` windows, so
    sampling a slot uniformly over all episodes is uniform over every valid window.
    With ``prioritize_ends`` (DreamerV2, ``replay.py``: start ~ U{0..L-1} clipped to
    ``L - length``) it offers ``L`` slots, the last ``length`` of which all map to the
    window that ends the episode. Episodes shorter than ``length`` offer none.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    slots = lengths if prioritize_ends else lengths - length + 1
    return np.where(lengths >= length, slots, 0)


def choose_windows(
    rng: np.random.Generator,
    lengths: np.ndarray,
    batch: int,
    length: int,
    prioritize_ends: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw ``batch`` windows; returns ``(episode_index, start)``, each ``(B,)`` int64.

    The caller must ensure at least one episode has ``length`` steps.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    weights = window_weights(lengths, length, prioritize_ends)
    ends = np.cumsum(weights)  # (E,) last slot (exclusive) of each episode
    slot = rng.integers(0, ends[-1], size=batch)  # (B,)
    episode = np.searchsorted(ends, slot, side="right")  # (B,)
    start = slot - (ends[episode] - weights[episode])  # (B,)
    if prioritize_ends:
        start = np.minimum(start, lengths[episode] - length)
    return episode, start
