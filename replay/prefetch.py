"""Getting batches to the learner: sampled, turned into tensors and pinned ahead of it on a
background thread (:class:`Prefetcher`), or gathered on the GPU from episodes kept there
(:class:`DeviceEpisodes`, :class:`DeviceSampler`)."""

import queue
import threading
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from mwm.errors import UserError
from replay.windows import choose_windows

Batch = Dict[str, torch.Tensor]


class Prefetcher:
    """Iterator of batches of torch tensors ``(B, T, ...)`` produced on a daemon thread.

    ``sample()`` returns a dict of numpy arrays; the thread converts it to CPU tensors
    without copying (dtypes kept: images stay uint8), pins them when ``pin_memory``,
    and queues up to ``prefetch`` batches; ``prefetch=0`` samples on the caller's thread
    instead (no thread; deterministic order with the rest of the program). ``__next__`` moves a batch to ``device``
    with ``non_blocking=True``. An exception raised by ``sample`` is re-raised by the
    next ``__next__``. ``close()`` stops the thread; it is also a context manager.
    """

    def __init__(
        self,
        sample: Callable[[], Dict[str, np.ndarray]],
        prefetch: int = 2,
        device="cpu",
        pin_memory: Optional[bool] = None,
    ):
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self._sample = sample
        self._device = torch.device(device)
        if pin_memory is None:
            pin_memory = self._device.type == "cuda"
        self._pin = bool(pin_memory) and torch.cuda.is_available()
        self._queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread = None
        if prefetch:
            self._thread = threading.Thread(target=self._produce, name="replay-prefetch", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the background thread is still alive (always False without prefetch)."""
        return self._thread is not None and self._thread.is_alive()

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Batch:
        if self._stop.is_set():
            raise StopIteration
        if self._thread is None:
            return self._move(self._to_tensors(self._sample()))
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise StopIteration from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        return self._move(item)

    def _move(self, batch: Batch) -> Batch:
        return {key: value.to(self._device, non_blocking=True) for key, value in batch.items()}

    def close(self) -> None:
        """Stop the background thread and drop queued batches; safe to call twice."""
        self._stop.set()
        while self._thread is not None and self._thread.is_alive():
            self._drain()
            self._thread.join(timeout=0.05)
        self._drain()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _produce(self) -> None:
        """Thread body: sample, convert, pin, queue; exits when stopped or on error."""
        while not self._stop.is_set():
            try:
                item = self._to_tensors(self._sample())
            except Exception as error:  # Handed to the consumer, which re-raises it.
                item = error
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def _to_tensors(self, arrays: Dict[str, np.ndarray]) -> Batch:
        tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()}
        if self._pin:
            tensors = {key: value.pin_memory() for key, value in tensors.items()}
        return tensors

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class DeviceEpisodes:
    """Replay episodes mirrored on a device, so that batches are gathered there.

    :meth:`sync` uploads each episode once (pinned, asynchronous on CUDA) and forgets the
    episodes the replay no longer holds; episodes are recognised by identity, which is
    stable because stored episodes are never modified. Memory is the raw size of the
    arrays (``nbytes``). Unfinished episodes (``Replay(ongoing=True)``) are new views
    each time and are uploaded again on every sample.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self._held: Dict[int, tuple] = {}  # id(episode) -> (episode, its tensors on the device)

    def sync(self, episodes: Sequence[Dict[str, np.ndarray]]) -> List[Batch]:
        """The device copies of ``episodes``, in order; drops those not listed."""
        held, out = {}, []
        for episode in episodes:
            entry = self._held.get(id(episode))
            if entry is None or entry[0] is not episode:
                entry = (episode, {key: self._upload(value) for key, value in episode.items()
                                   if np.asarray(value).dtype != object})
            held[id(episode)] = entry
            out.append(entry[1])
        self._held = held
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of episode data held on the device."""
        return sum(t.numel() * t.element_size() for _, tensors in self._held.values() for t in tensors.values())

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.array(array, copy=True))  # (T, ...) own, writable memory
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host.to(self.device)


def gather_on_device(episodes: Sequence[Batch], index: np.ndarray, start: np.ndarray, length: int) -> Batch:
    """Windows ``episodes[index[b]][start[b] : start[b] + length]`` as (B, T, ...) tensors, one
    stack per key (the device twin of :func:`replay.buffer.gather_windows`)."""
    rows = list(zip(index.tolist(), start.tolist()))
    return {key: torch.stack([episodes[e][key][s : s + length] for e, s in rows])  # (B, T, ...)
            for key in episodes[0]}


class DeviceSampler:
    """Endless (B, T) batches of a :class:`replay.Replay` gathered from :class:`DeviceEpisodes`.

    Windows are chosen exactly as :meth:`replay.Replay.sample` chooses them (same
    generator, same rule), so a replay sampled this way gives the batches it would give
    on the host, without copying images from the host each time. The same iterator
    interface as :class:`Prefetcher` (``next``, ``close``).
    """

    def __init__(self, replay, episodes: DeviceEpisodes, batch: int, length: int, prioritize_ends: bool = False):
        if batch < 1 or length < 1:
            raise UserError(f"replay batch and length must be >= 1, got batch={batch} length={length}")
        self._replay = replay
        self._episodes = episodes
        self._batch = batch
        self._length = length
        self._prioritize_ends = prioritize_ends

    def __iter__(self) -> "DeviceSampler":
        return self

    def __next__(self) -> Batch:
        episodes, index, start = self._choose()
        return gather_on_device(self._episodes.sync(episodes), index, start, self._length)

    def _choose(self):
        """The replay's episodes and the chosen (episode, start) pairs; reads the replay's store
        under its lock, as :meth:`replay.Replay.sample` does."""
        replay = self._replay
        with replay._lock:
            episodes, lengths = replay._sampleable()
            if not len(lengths) or lengths.max() < self._length:
                raise UserError(f"replay has no episode of {self._length} or more steps ({len(lengths)} episodes): "
                                "collect more data before training or lower the sequence length")
            index, start = choose_windows(replay._rng, lengths, self._batch, self._length, self._prioritize_ends)
        return episodes, index, start

    def close(self) -> None:
        """Nothing runs in the background; present for the :class:`Prefetcher` interface."""

    def __enter__(self) -> "DeviceSampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
