"""Episode files: naming, listing, validation, atomic saving and safe loading.

An episode is a dict of numpy arrays sharing a leading time axis ``(T, ...)``, one
entry per key of the step protocol (docs/ARCHITECTURE.md) plus any extras. On disk it
is one compressed ``.npz`` named ``<timestamp>-<index>-<length>.npz``; see
replay/README.md for the format and its guarantees.
"""

import datetime
import os
import re
import zipfile
import zlib
from typing import Dict, List, NamedTuple, Optional

import numpy as np

from mwm.atomic import atomic_save_npz

Episode = Dict[str, np.ndarray]

REQUIRED_KEYS = ("image", "action", "reward", "is_first", "is_last", "is_terminal")
# Protocol dtypes that steps are converted to; other keys keep the dtype they arrive in.
PROTOCOL_DTYPES = {
    "reward": np.float32,
    "action": np.float32,
    "is_first": bool,
    "is_last": bool,
    "is_terminal": bool,
}
_NAME = re.compile(r"^(\d{8}T\d{12})-(\d+)-(\d+)\.npz$")


class EpisodeFileError(Exception):
    """An episode file that cannot be read back or breaks the episode format."""


class EpisodeFile(NamedTuple):
    """An episode file found on disk, described by its name alone."""

    path: str
    timestamp: str
    index: int
    length: int


def episode_filename(index: int, length: int, now: Optional[datetime.datetime] = None) -> str:
    """``<YYYYmmddTHHMMSSffffff>-<index>-<length>.npz``; names sort oldest first."""
    now = now or datetime.datetime.now()
    return f"{now:%Y%m%dT%H%M%S%f}-{index}-{length}.npz"


def list_episode_files(directory: str) -> List[EpisodeFile]:
    """Episode files in ``directory``, oldest first; temp files and other names are ignored."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match:
            timestamp, index, length = match.groups()
            found.append(
                EpisodeFile(os.path.join(directory, name), timestamp, int(index), int(length))
            )
    found.sort(key=lambda f: (f.timestamp, f.index))
    return found


def save_episode(directory: str, episode: Episode, index: int) -> str:
    """Write ``episode`` atomically as a compressed npz; returns the path written."""
    length = episode_length(episode)
    path = os.path.join(directory, episode_filename(index, length))
    while os.path.exists(path):  # Same microsecond and index: never overwrite an episode.
        index += 1
        path = os.path.join(directory, episode_filename(index, length))
    atomic_save_npz(path, episode, compressed=True)
    return path


def load_episode(path: str, expected_length: Optional[int] = None) -> Episode:
    """Read and validate one episode file; raises :class:`EpisodeFileError` if unusable.

    Every array is read fully here, so truncation and CRC errors surface now rather
    than in the middle of sampling.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            episode = {key: np.ascontiguousarray(data[key]) for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as error:
        raise EpisodeFileError(f"{type(error).__name__}: {error}") from error
    try:
        validate_episode(episode)
    except ValueError as error:
        raise EpisodeFileError(str(error)) from error
    if expected_length is not None and episode_length(episode) != expected_length:
        raise EpisodeFileError(
            f"holds {episode_length(episode)} steps but its name says {expected_length}"
        )
    return episode


def episode_length(episode: Episode) -> int:
    """Number of steps in an episode (length of its ``is_first`` array)."""
    return len(episode["is_first"])


def validate_episode(episode: Episode) -> None:
    """Raise ``ValueError`` unless the episode has every protocol key, one length, and starts."""
    missing = [key for key in REQUIRED_KEYS if key not in episode]
    if missing:
        raise ValueError(f"missing keys {missing} (episodes need {list(REQUIRED_KEYS)})")
    lengths = {key: np.shape(value)[0] if np.ndim(value) else None for key, value in episode.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise ValueError(f"keys have different lengths or no time axis: {lengths}")
    if lengths["is_first"] < 1:
        raise ValueError("episode has no steps")
    if not bool(episode["is_first"][0]):
        raise ValueError("is_first is False at the episode's first step")
    if episode["image"].dtype != np.uint8:
        raise ValueError(f"image dtype is {episode['image'].dtype}, expected uint8")
    for key in ("reward", "action"):  # NaN or inf here would poison every update that samples it
        value = np.asarray(episode[key])
        if np.issubdtype(value.dtype, np.number) and not np.isfinite(value).all():
            step = int(np.argmax(~np.isfinite(value).reshape(len(value), -1).all(1)))
            raise ValueError(f"{key} holds NaN or inf at step {step}")


def to_protocol_dtypes(episode: Episode) -> Episode:
    """Arrays as contiguous numpy with the protocol dtypes (no copy where already so)."""
    out = {}
    for key, value in episode.items():
        dtype = PROTOCOL_DTYPES.get(key)
        out[key] = np.ascontiguousarray(np.asarray(value, dtype=dtype))
    return out
