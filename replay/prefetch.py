"""Background sampling: batches are drawn, turned into tensors and pinned ahead of the learner."""

import queue
import threading
from typing import Callable, Dict, Optional

import numpy as np
import torch

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
