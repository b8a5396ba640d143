"""Checkpoints: atomic, rotated, finite-only saves; newest-valid loading; RNG capture.

Files are ``<directory>/checkpoint-<step>.pt`` written with :func:`mwm.atomic.atomic_torch_save`.
A state must hold tensors, numbers, strings, lists, tuples and dicts only (what
``torch.load(weights_only=True)`` accepts); :func:`rng_state` returns such a state.
"""

import os
import random
import re
import warnings
import zipfile
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from mwm.atomic import atomic_torch_save

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def save_checkpoint(directory: str, state: dict, keep: int = 2, step: Optional[int] = None) -> str:
    """Write ``state`` to ``directory/checkpoint-<step>.pt`` and keep the newest ``keep`` files.

    ``step`` defaults to ``state["step"]``. A state with a non-finite float tensor is
    refused (``ValueError`` naming its key) before anything is written, so good
    checkpoints are never replaced by diverged weights. Older checkpoints are deleted
    only after the new one is safely on disk, and only those of an earlier step (the new
    intact file supersedes them); a file of a later step (say, a damaged one from before
    a resume) is never deleted. Returns the path written.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if step is None:
        if "step" not in state:
            raise ValueError("save_checkpoint needs a step: pass step= or put 'step' in the state")
        step = state["step"]
    bad = first_nonfinite(state)
    if bad is not None:
        raise ValueError(f"refusing to save a checkpoint: tensor {bad!r} has NaN or inf values")
    path = os.path.join(directory, f"checkpoint-{int(step)}.pt")
    atomic_torch_save(state, path)
    older = [p for s, p in list_checkpoints(directory) if s < int(step)]
    for old in older[: max(len(older) - (keep - 1), 0)]:
        try:
            os.remove(old)
        except OSError as error:
            warnings.warn(f"could not delete old checkpoint {old}: {error}", stacklevel=2)
    return path


def load_latest(
    directory: str, map_location="cpu", weights_only: bool = True, check: Optional[Callable[[object], None]] = None
) -> Tuple[Optional[dict], Optional[str]]:
    """The newest readable checkpoint in ``directory`` as ``(state, path)``, or ``(None, None)``.

    Every file's zip CRCs are checked first: a truncated or garbled file is skipped
    with a warning naming it (and left in place) and the next older one is tried. So is
    an intact zip that ``torch.load`` cannot read (not a checkpoint, or one holding
    classes that ``weights_only`` refuses), and one whose state ``check`` rejects by
    raises (a checkpoint that is not this program's, or not this run's).
    """
    for _, path in reversed(list_checkpoints(directory)):
        reason = None
        if not _is_intact_zip(path):
            reason = "truncated or failed its CRC check"
        else:
            try:
                state = torch.load(path, map_location=map_location, weights_only=weights_only)
                if check is not None:
                    check(state)
            except Exception as error:  # pickle, zip layout, unknown classes, a foreign state ...
                reason = f"not a checkpoint of this run: {type(error).__name__}: {str(error).splitlines()[0][:120]}" \
                    if str(error) else f"not a checkpoint of this run: {type(error).__name__}"
        if reason is not None:
            warnings.warn(f"skipping damaged checkpoint {path} ({reason}); trying an older one", stacklevel=2)
            continue
        return state, path
    return None, None


def list_checkpoints(directory: str) -> List[Tuple[int, str]]:
    """``(step, path)`` of every checkpoint file in ``directory``, oldest step first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


def all_finite(module_or_state) -> bool:
    """True when every floating-point tensor of a module, state dict or nested state is finite."""
    return first_nonfinite(module_or_state) is None


def first_nonfinite(module_or_state) -> Optional[str]:
    """Dotted key of the first float tensor holding NaN or inf, or None if all are finite."""
    if isinstance(module_or_state, torch.nn.Module):
        module_or_state = module_or_state.state_dict()
    for key, tensor in _float_tensors(module_or_state, ""):
        if not bool(torch.isfinite(tensor).all()):
            return key
    return None


def rng_state() -> dict:
    """The RNG states of python ``random``, numpy's global generator, torch CPU and CUDA.

    Only tensors, ints, floats, strings, lists and dicts, so ``weights_only`` loads it.
    """
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured; CUDA states are skipped when CUDA is absent
    or the device count differs."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _float_tensors(value, key: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """Walk dicts, lists and tuples depth first, yielding ``(dotted key, float tensor)``."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _float_tensors(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _float_tensors(item, f"{key}.{index}" if key else str(index))


def _is_intact_zip(path: str) -> bool:
    """Whether ``path`` is a zip archive whose every member passes its CRC check."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False
