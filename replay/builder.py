"""One worker's episode in progress, kept in growable arrays instead of per-step objects."""

from typing import Dict, Mapping

import numpy as np

from replay.episodes import PROTOCOL_DTYPES, Episode


class EpisodeBuilder:
    """Accumulates the steps of one episode into preallocated arrays that double when full.

    Appends are amortised O(1) and no Python object per step is kept. ``view()`` gives
    read-only views of the steps so far (valid while further steps are appended, which
    only write past them); ``finish()`` returns exact-length contiguous copies.
    """

    def __init__(self, initial_capacity: int = 64):
        self._initial = initial_capacity
        self._arrays: Dict[str, np.ndarray] = {}
        self._length = 0

    @property
    def length(self) -> int:
        """Steps appended so far."""
        return self._length

    def append(self, step: Mapping[str, object]) -> None:
        """Add one step (dict of numpy values, the step protocol)."""
        step = {key: np.asarray(value, dtype=PROTOCOL_DTYPES.get(key)) for key, value in step.items()}
        if not self._arrays:
            self._arrays = {
                key: np.empty((self._initial,) + value.shape, value.dtype) for key, value in step.items()
            }
        elif step.keys() != self._arrays.keys():
            raise ValueError(
                f"step keys {sorted(step)} differ from this episode's {sorted(self._arrays)}"
            )
        if self._length == len(next(iter(self._arrays.values()))):
            self._grow()
        for key, value in step.items():
            target = self._arrays[key]
            if value.shape != target.shape[1:]:
                raise ValueError(
                    f"step {key!r} has shape {value.shape}, earlier steps {target.shape[1:]}"
                )
            target[self._length] = value
        self._length += 1

    def view(self) -> Episode:
        """Read-only views ``(T, ...)`` of the steps so far."""
        out = {}
        for key, array in self._arrays.items():
            part = array[: self._length]
            part.flags.writeable = False
            out[key] = part
        return out

    def finish(self) -> Episode:
        """Exact-length contiguous copies of the episode; the builder is then empty."""
        episode = {key: array[: self._length].copy() for key, array in self._arrays.items()}
        self._arrays = {}
        self._length = 0
        return episode

    def _grow(self) -> None:
        """Double every array's capacity, keeping the steps written so far."""
        for key, array in self._arrays.items():
            bigger = np.empty((2 * len(array),) + array.shape[1:], array.dtype)
            bigger[: self._length] = array[: self._length]
            self._arrays[key] = bigger
