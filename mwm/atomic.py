"""Crash-safe file writes: a file appears under its final name complete or not at all.

Every writer here follows the same recipe: write into a temporary file in the
destination folder (named ``.<name>.mwm-tmp-<pid>-<random>.tmp``: hidden, so that
listings ignore it, and recognisable beyond doubt as ours, so that cleaning up never
touches a user's file),
flush and fsync it, ``os.replace`` it over the final name (atomic on POSIX and
Windows within one file system), then fsync the folder so the rename itself survives
a power cut. If the disk is full or the folder is not writable, the temporary file is
removed, the previous file under the final name (if any) is left untouched, and a
one-line :class:`mwm.errors.UserError` says what to do.

A crash can leave a temporary file behind (never a half-written final name);
:func:`remove_stale_temp_files` clears them when a run restarts: only names of that
exact form whose writing process is gone, never any other ``.*.tmp`` file.

This module is a leaf: it imports only the standard library, numpy, torch and
``mwm.faults`` (itself standard library only), so every package (``envs``, ``replay``,
``mwm``) may use it.
"""

import errno
import io
import os
import re
import tempfile
from typing import Callable, List, Mapping

import numpy as np

from mwm.errors import UserError
from mwm.faults import maybe_kill

_ADVICE = {
    getattr(errno, name): advice
    for name, advice in {
        "ENOSPC": ("no space left on device", "free disk space"),
        "EDQUOT": ("disk quota exceeded", "free space or raise the quota"),
        "EACCES": ("permission denied", "choose a writable folder or fix its permissions"),
        "EPERM": ("operation not permitted", "choose a writable folder or fix its permissions"),
        "EROFS": ("read-only file system", "choose a folder on a writable disk"),
    }.items()
    if hasattr(errno, name)
}


TEMP_MARK = ".mwm-tmp-"  # .<final name>.mwm-tmp-<pid>-<random>.tmp
_TEMP_NAME = re.compile(r"^\.(?P<final>.+)" + re.escape(TEMP_MARK) + r"(?P<pid>\d+)-[a-z0-9_]{6,}\.tmp$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the temp file of one of this module's writes (and nobody else's)."""
    return _TEMP_NAME.match(name) is not None


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic_write(path, lambda f: f.write(text.encode(encoding)))


def atomic_save_npz(path: str, arrays: Mapping[str, np.ndarray], compressed: bool = True) -> None:
    """Save a dict of arrays as one ``.npz`` file at exactly ``path``, atomically.

    Unlike ``np.savez`` given a name, no ``.npz`` suffix is appended: ``path`` is the
    final name. Object arrays are refused (they would need pickle to load back).
    """
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    for key, value in arrays.items():
        if value.dtype == object:
            raise ValueError(f"array {key!r} has dtype object; store numeric arrays only")
    save = np.savez_compressed if compressed else np.savez
    _atomic_write(path, lambda f: save(f, **arrays))


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch  # Imported here so that numpy-only users of this module stay light.

    _atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write(path: str, write: Callable[[io.BufferedWriter], object]) -> None:
    """Run ``write`` on a temp file next to ``path``, then move it over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix="." + os.path.basename(path) + TEMP_MARK + f"{os.getpid()}-", suffix=".tmp", dir=folder
        )
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            maybe_kill("write", os.path.basename(path))  # crash tests: die before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as error:
        raise UserError(describe_os_error(error, path)) from error
    except RuntimeError as error:  # torch.save's zip writer reports a failed write (full disk) this way
        if "writ" not in str(error).lower():
            raise
        raise UserError(f"writing {path} failed ({str(error).splitlines()[0][:200]}): free disk space or check "
                        "the disk; earlier files are intact") from error
    finally:
        if tmp is not None:
            _remove_quietly(tmp)
    _fsync_folder(folder)


def remove_stale_temp_files(folder: str) -> List[str]:
    """Delete the temp files that writes interrupted by a crash left in ``folder``.

    Only files named by this module (``.<name>.mwm-tmp-<pid>-<random>.tmp``, regular
    files, not links) whose writing process no longer runs are removed; any other file,
    ``.notes.tmp`` included, is left alone. Call it only while no other process writes
    there (the run directory's lock). Returns the names removed; a missing folder has none.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _TEMP_NAME.match(name)
        full = os.path.join(folder, name)
        if match is None or os.path.islink(full) or not os.path.isfile(full) or _alive(int(match["pid"])):
            continue
        _remove_quietly(full)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (its temp file may still be being written)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def describe_os_error(error: OSError, path: str) -> str:
    """One line naming a failed write, its path and the fix (e.g. ENOSPC: free disk space)."""
    problem, fix = _ADVICE.get(
        error.errno, (error.strerror or type(error).__name__, "check the path and the disk")
    )
    return f"{problem} writing {path}: {fix}; earlier files are intact"


def _remove_quietly(path: str) -> None:
    """Delete a leftover temp file; a failure here must not hide the original error."""
    try:
        os.remove(path)
    except OSError:
        return


def _fsync_folder(folder: str) -> None:
    """Persist the rename. Not every platform can open a folder; skip where it cannot."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        return
    finally:
        os.close(fd)
