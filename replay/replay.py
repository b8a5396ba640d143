"""The replay: episodes saved to disk as they finish, kept in RAM up to a step budget,
and sampled as fixed-length sequences that never cross an episode boundary."""

import copy
import os
import threading
import warnings
from typing import Dict, Mapping, Optional

import numpy as np

from mwm.errors import UserError
from replay.buffer import EpisodeStore, episode_spec, gather_windows
from replay.builder import EpisodeBuilder
from replay.episodes import (
    REQUIRED_KEYS,
    Episode,
    EpisodeFileError,
    episode_length,
    list_episode_files,
    load_episode,
    save_episode,
    to_protocol_dtypes,
    validate_episode,
)
from replay.prefetch import Prefetcher
from replay.windows import choose_windows


class Replay:
    """Episode replay on disk and in RAM (see replay/README.md).

    Args:
        directory: folder for episode files; created if missing, never pruned.
        capacity: most steps kept in RAM; the oldest episodes leave RAM first.
        seed: seeds this replay's own ``numpy.random.Generator`` used for sampling.
        ongoing: also sample from episodes still in progress (every worker's
            unfinished episode), as DreamerV2's ``ongoing`` option does.

    ``add`` and sampling may run on different threads (the prefetcher does); one
    lock guards the RAM store, the workers' episodes in progress and the generator.
    """

    def __init__(self, directory: str, capacity: int, seed: int, ongoing: bool = False):
        if not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise UserError(f"replay capacity must be a positive number of steps, got {capacity!r}")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            raise UserError(
                f"cannot create replay folder {directory} ({error.strerror}): choose a writable path"
            ) from error
        self.directory = os.fspath(directory)
        self.capacity = int(capacity)
        self.ongoing = ongoing
        self._store = EpisodeStore(self.capacity)
        self._builders: Dict[int, EpisodeBuilder] = {}
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        files = list_episode_files(self.directory)
        self._next_index = max(f.index for f in files) + 1 if files else 0
        self._in_ram_paths = set()
        self._saved = 0
        self._skipped_files = 0

    # ------------------------------------------------------------------ adding

    def add(self, step: Mapping[str, object], worker: int = 0) -> None:
        """Append one step (the step protocol) to ``worker``'s episode in progress.

        A step with ``is_last`` finishes the episode: it is saved to disk and enters
        the RAM store. A step with ``is_first`` while the worker still has an
        unfinished episode drops that fragment with a warning.
        """
        is_first, is_last = bool(step["is_first"]), bool(step["is_last"])
        with self._lock:
            builder = self._builders.setdefault(worker, EpisodeBuilder())
            if is_first and builder.length:
                warnings.warn(
                    f"replay worker {worker} started an episode before finishing the previous one;"
                    f" dropping its {builder.length} unfinished steps",
                    stacklevel=2,
                )
                builder.finish()
            if not is_first and not builder.length:
                raise UserError(
                    f"replay worker {worker} got a step with is_first=False but has no episode in"
                    " progress: every episode must start with an is_first step"
                )
            if is_first:
                _check_first_step(step, worker)
            try:
                builder.append(step)
            except ValueError as error:
                raise UserError(f"replay worker {worker}: {error}") from error
            if not is_last:
                return
            episode = builder.finish()
        self.add_episode(episode)

    def add_batch(self, steps: Mapping[str, np.ndarray]) -> None:
        """Add a batched step ``(N, ...)`` from a vector env: row ``i`` goes to worker ``i``."""
        count = len(steps["is_first"])
        for i in range(count):
            self.add({key: value[i] for key, value in steps.items()}, worker=i)

    def add_episode(self, episode: Mapping[str, np.ndarray], save: bool = True) -> Optional[str]:
        """Add a finished episode of ``(T, ...)`` arrays; saved to disk unless ``save=False``.

        Returns the path written (or None when not saved).
        """
        episode = to_protocol_dtypes(episode)
        try:
            validate_episode(episode)
            with self._lock:
                self._store.check_compatible(episode)
        except ValueError as error:
            raise UserError(f"cannot add episode to replay: {error}") from error
        path = None
        if save:
            with self._lock:
                index, self._next_index = self._next_index, self._next_index + 1
                self._saved += 1
            path = save_episode(self.directory, episode, index)
        self._insert(episode, path)
        return path

    def _insert(self, episode: Episode, path: Optional[str]) -> None:
        length = episode_length(episode)
        if length > self.capacity:
            warnings.warn(
                f"episode of {length} steps exceeds the replay capacity of {self.capacity}:"
                " it stays on disk but not in RAM; raise the capacity",
                stacklevel=3,
            )
        with self._lock:
            self._store.insert(episode)
            if path is not None:
                self._in_ram_paths.add(path)

    # ------------------------------------------------------------------ loading

    def load(self, max_steps: Optional[int] = None, image_shape=None) -> int:
        """Reload the newest episode files into RAM, up to the capacity (and ``max_steps``).

        Files already in RAM are not loaded twice; unreadable or invalid files are
        skipped with a warning naming them (never deleted), as are files whose layout
        differs from the newest one loaded. With ``image_shape`` (the env's (H, W, C)),
        an episode of another image shape is a UserError naming it: those files belong
        to another run. Returns the total steps of all episode files on disk, as
        recorded in their names.
        """
        files = list_episode_files(self.directory)
        budget = self.capacity - self.num_steps
        if max_steps is not None:
            budget = min(budget, max_steps)
        chosen, used = [], 0
        for file in reversed(files):  # newest first
            if file.path in self._in_ram_paths:
                continue
            if used + file.length > budget:
                break
            try:
                episode = load_episode(file.path, expected_length=file.length)
                if image_shape is not None and tuple(episode["image"].shape[1:]) != tuple(image_shape):
                    raise UserError(f"episode file {file.path} holds images of shape "
                                    f"{tuple(episode['image'].shape[1:])} but the env renders {tuple(image_shape)}: "
                                    "move the episodes of another run out of this replay folder, or use a new --logdir")
                with self._lock:
                    self._store.check_compatible(episode)
                if chosen and episode_spec(episode) != episode_spec(chosen[0][1]):
                    raise ValueError("its keys, shapes or dtypes differ from the newer episodes'")
            except (EpisodeFileError, ValueError) as error:
                warnings.warn(f"skipping episode file {file.path}: {error}", stacklevel=2)
                self._skipped_files += 1
                continue
            chosen.append((file, episode))
            used += file.length
        for file, episode in reversed(chosen):  # oldest first, so eviction order holds
            self._insert(episode, file.path)
        return sum(file.length for file in files)

    # ------------------------------------------------------------------ sampling

    def sample(self, batch: int, length: int, prioritize_ends: bool = False) -> Dict[str, np.ndarray]:
        """A batch of ``batch`` windows of ``length`` steps: dict of ``(B, T, ...)`` arrays.

        Windows are uniform over every (episode, start) pair that fits inside one
        episode, so episodes weigh by their number of windows; episodes shorter than
        ``length`` are never sampled. ``is_first`` is True only where a window starts
        at its episode's first step. ``prioritize_ends`` oversamples windows that end
        their episode (DreamerV2).
        """
        if batch < 1 or length < 1:
            raise UserError(f"replay batch and length must be >= 1, got batch={batch} length={length}")
        with self._lock:
            episodes, lengths = self._sampleable()
            if not len(lengths) or lengths.max() < length:
                longest = int(lengths.max()) if len(lengths) else 0
                raise UserError(
                    f"replay has no episode of {length} or more steps ({len(lengths)} episodes,"
                    f" longest {longest}): collect more data before training or lower the sequence length"
                )
            index, start = choose_windows(self._rng, lengths, batch, length, prioritize_ends)
        return gather_windows(episodes, episode_spec(episodes[0]), index, start, length)

    def dataset(
        self,
        batch: int,
        length: int,
        prefetch: int = 2,
        device="cpu",
        pin_memory: Optional[bool] = None,
        prioritize_ends: bool = False,
    ) -> Prefetcher:
        """Endless iterator of batches as torch tensors ``(B, T, ...)`` on ``device``.

        Sampled on a background thread ``prefetch`` batches ahead; pinned when the
        device is CUDA (unless ``pin_memory`` says otherwise). Images stay uint8.
        Call ``close()`` (or use it as a context manager) to stop the thread.
        """
        return Prefetcher(
            lambda: self.sample(batch, length, prioritize_ends), prefetch, device, pin_memory
        )

    def _sampleable(self):
        """Stored episodes plus, when ``ongoing``, the unfinished ones; call under the lock."""
        episodes, lengths = self._store.snapshot()
        if self.ongoing:
            unfinished = [b.view() for b in self._builders.values() if b.length]
            if unfinished:
                episodes = episodes + tuple(unfinished)
                extra = np.array([episode_length(e) for e in unfinished], dtype=np.int64)
                lengths = np.concatenate([lengths, extra])
        return episodes, lengths

    def rng_state(self) -> Dict:
        """The sampling generator's state (ints and strings): saved with a checkpoint, so that a
        resumed run draws the batches the uninterrupted run would have drawn."""
        with self._lock:
            return copy.deepcopy(self._rng.bit_generator.state)

    def set_rng_state(self, state: Mapping) -> None:
        """Put back what :meth:`rng_state` returned."""
        with self._lock:
            self._rng.bit_generator.state = dict(state)

    # ------------------------------------------------------------------ reporting

    @property
    def num_steps(self) -> int:
        """Steps of finished episodes held in RAM."""
        return self._store.num_steps

    @property
    def num_episodes(self) -> int:
        """Finished episodes held in RAM."""
        return self._store.num_episodes

    def __len__(self) -> int:
        return self.num_steps

    def stats(self) -> Dict[str, int]:
        """Counters for logging: RAM contents, episodes in progress, files written/skipped."""
        with self._lock:
            return {
                "steps": self._store.num_steps,
                "episodes": self._store.num_episodes,
                "ram_bytes": self._store.nbytes,
                "ongoing_steps": sum(b.length for b in self._builders.values()),
                "episodes_saved": self._saved,
                "episodes_evicted": self._store.num_evicted,
                "files_skipped": self._skipped_files,
            }


def _check_first_step(step: Mapping[str, object], worker: int) -> None:
    """Fail early, on an episode's first step, if the step breaks the protocol."""
    missing = [key for key in REQUIRED_KEYS if key not in step]
    if missing:
        raise UserError(
            f"replay worker {worker}: step lacks keys {missing}; steps need {list(REQUIRED_KEYS)}"
        )
    dtype = np.asarray(step["image"]).dtype
    if dtype != np.uint8:
        raise UserError(
            f"replay worker {worker}: image dtype is {dtype}; store uint8 images (convert to float on the device)"
        )
