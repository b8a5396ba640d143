"""Environments for mwm: Atari (ale-py), DeepMind Control (dm_control) and toy_catch.

`make(name, seed=None, **overrides)` returns one gymnasium env whose observation is a
dict with `image` uint8 (H, W, C) plus suite extras (see envs/README.md);
`envs.vector.VectorEnv` runs several in worker processes and speaks the step protocol
of docs/ARCHITECTURE.md. Importing this package is cheap: ale-py and dm_control are
imported only when an env of their suite is made or listed.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType

import gymnasium as gym

from envs.names import close_matches
from mwm.errors import UserError

# suite -> (name prefix, module implementing names() and make(name, seed, overrides))
SUITES = MappingProxyType({
    "atari": ("atari_", "envs.atari"),
    "dmc": ("dmc_", "envs.dmc"),
    "toy": ("toy_", "envs.toy"),
})


def _suite_module(suite: str):
    """Import the module of `suite` (lazily, so unused simulators are never loaded)."""
    return importlib.import_module(SUITES[suite][1])


def list_envs(suite: str | None = None) -> list[str]:
    """All env names `make` accepts, or those of one suite ('atari', 'dmc' or 'toy')."""
    if suite is not None and suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}; valid suites: {', '.join(SUITES)}")
    chosen = [suite] if suite is not None else list(SUITES)
    return [name for each in chosen for name in _suite_module(each).names()]


def suite_of(name: str) -> str | None:
    """The suite an env name belongs to by its prefix, or None."""
    for suite, (prefix, _) in SUITES.items():
        if name.startswith(prefix):
            return suite
    return None


def make(name: str, seed: int | None = None, **overrides) -> gym.Env:
    """Build the env `name` ('atari_<game>', 'dmc_<domain>_<task>' or 'toy_catch').

    seed: used by the first `reset()` that is not given a seed of its own.
    overrides: suite options such as `action_repeat=2` or `object_size=8`; an
    unknown option or name raises UserError with the valid choices.
    """
    suite = suite_of(name)
    if suite is None:
        prefixes = ", ".join(f"{p}... ({s})" for s, (p, _) in SUITES.items())
        raise UserError(f"unknown env {name!r}: names start with {prefixes}{_suggestion(name)}")
    return _suite_module(suite).make(name, seed, overrides)


def _suggestion(name: str) -> str:
    """"; did you mean: ..." over all env names, also matching names without their prefix."""
    full = list_envs()
    bare = {each.split("_", 1)[1]: each for each in full}  # 'pong' -> 'atari_pong'
    matches = close_matches(name, full) + [bare[m] for m in close_matches(name, bare)]
    unique = list(dict.fromkeys(matches))[:5]
    return f"; did you mean: {', '.join(unique)}" if unique else ""


# gymnasium.make("mwm/toy_catch-v0") and friends (envs/registration.py; cheap, no simulator imported)
from envs.registration import register_all as _register_all  # noqa: E402

_register_all()
