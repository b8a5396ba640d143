"""Finished episodes in RAM, bounded by a step capacity, and batch gathering.

Not thread-safe on its own: :class:`replay.Replay` serialises access with its lock.
Stored episodes are never modified after insertion, so arrays handed out by
:meth:`EpisodeStore.snapshot` may be read without the lock.
"""

import collections
from typing import Dict, Sequence, Tuple

import numpy as np

from replay.episodes import Episode, episode_length

Spec = Dict[str, Tuple[tuple, np.dtype]]


class EpisodeStore:
    """Oldest-first queue of episodes holding at most ``capacity`` steps in total."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._episodes = collections.deque()
        self._steps = 0
        self._nbytes = 0
        self._evicted = 0
        self._spec: Spec = {}
        self._snapshot = None  # cached (episodes, lengths) until the next mutation

    @property
    def num_steps(self) -> int:
        """Steps held in RAM."""
        return self._steps

    @property
    def num_episodes(self) -> int:
        """Episodes held in RAM."""
        return len(self._episodes)

    @property
    def nbytes(self) -> int:
        """Bytes of array data held in RAM."""
        return self._nbytes

    @property
    def num_evicted(self) -> int:
        """Episodes dropped from RAM to respect the capacity since creation."""
        return self._evicted

    @property
    def spec(self) -> Spec:
        """Per-key ``(step shape, dtype)`` every stored episode shares (empty until the first)."""
        return dict(self._spec)

    def check_compatible(self, episode: Episode) -> None:
        """Raise ``ValueError`` if ``episode`` has other keys, shapes or dtypes than the store."""
        spec = episode_spec(episode)
        if self._spec and spec != self._spec:
            raise ValueError(f"episode layout {_describe(spec)} differs from the replay's {_describe(self._spec)}")

    def insert(self, episode: Episode) -> int:
        """Append a finished episode, then evict the oldest until within capacity.

        Returns how many episodes were evicted (an episode longer than the capacity
        evicts everything, itself included).
        """
        self.check_compatible(episode)
        if not self._spec:
            self._spec = episode_spec(episode)
        self._episodes.append(episode)
        self._steps += episode_length(episode)
        self._nbytes += _episode_nbytes(episode)
        evicted = 0
        while self._steps > self.capacity:
            old = self._episodes.popleft()
            self._steps -= episode_length(old)
            self._nbytes -= _episode_nbytes(old)
            evicted += 1
        self._evicted += evicted
        self._snapshot = None
        return evicted

    def snapshot(self) -> Tuple[Tuple[Episode, ...], np.ndarray]:
        """The stored episodes, oldest first, and their lengths ``(E,)``."""
        if self._snapshot is None:
            episodes = tuple(self._episodes)
            lengths = np.array([episode_length(e) for e in episodes], dtype=np.int64)
            self._snapshot = (episodes, lengths)
        return self._snapshot


def gather_windows(
    episodes: Sequence[Episode],
    spec: Spec,
    episode_index: np.ndarray,
    start: np.ndarray,
    length: int,
) -> Dict[str, np.ndarray]:
    """Copy the chosen windows into fresh ``(B, T, ...)`` arrays, one slice copy per sequence and key."""
    batch = len(episode_index)
    out = {key: np.empty((batch, length) + shape, dtype) for key, (shape, dtype) in spec.items()}
    for row, (e, s) in enumerate(zip(episode_index.tolist(), start.tolist())):
        episode = episodes[e]
        for key, target in out.items():
            target[row] = episode[key][s : s + length]  # (T, ...)
    return out


def episode_spec(episode: Episode) -> Spec:
    """Per-key ``(step shape, dtype)`` of an episode."""
    return {key: (value.shape[1:], value.dtype) for key, value in episode.items()}


def _episode_nbytes(episode: Episode) -> int:
    return sum(value.nbytes for value in episode.values())


def _describe(spec: Spec) -> str:
    return "{" + ", ".join(f"{k}: {s} {d}" for k, (s, d) in sorted(spec.items())) + "}"
