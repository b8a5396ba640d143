"""Checks on env names and override keywords, with 'did you mean' suggestions."""

from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable, Iterable, Mapping

from mwm.errors import UserError

# the tail of an unknown-name error: how to see every name of a suite
LIST_HINT = "python -c \"import envs; print(envs.list_envs('{suite}'))\" lists them"


def close_matches(word: str, candidates: Iterable[str], count: int = 5) -> list[str]:
    """The candidates most similar to `word` (difflib ratio >= 0.6), best first."""
    return difflib.get_close_matches(word, list(candidates), n=count, cutoff=0.6)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A message tail such as "; did you mean: a, b" or "" when nothing is close."""
    matches = close_matches(word, candidates)
    return f"; did you mean: {', '.join(matches)}" if matches else ""


def option_names(factory: Callable, fixed: Iterable[str]) -> list[str]:
    """The keyword options a user may override: `factory`'s parameters minus `fixed`."""
    fixed = set(fixed)
    return [p for p in inspect.signature(factory).parameters if p not in fixed]


def check_overrides(suite: str, overrides: Mapping[str, object], allowed: list[str]) -> None:
    """Raise UserError naming the first override keyword `suite` envs do not take."""
    for key in overrides:
        if key not in allowed:
            raise UserError(
                f"unknown option {key!r} for {suite} envs{did_you_mean(key, allowed)}; "
                f"valid options: {', '.join(allowed)}"
            )


def check_size(size: object) -> tuple[int, int]:
    """Validate an image size (height, width) and return it as a tuple of ints."""
    if isinstance(size, int):
        size = (size, size)
    try:
        height, width = (int(s) for s in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise UserError(f"size must be (height, width) in pixels, got {size!r}") from None
    if height < 1 or width < 1:
        raise UserError(f"size must be positive (height, width), got {size!r}")
    return height, width


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Validate that `value` is an integer in [low, high] (no upper bound when high is None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise UserError(f"{name} must be {bound}, got {value}")
    return value


def check_float(name: str, value: object, low: float, high: float) -> float:
    """Validate that `value` is a real number in [low, high]."""
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None
    if not low <= value <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {value}")
    return value
