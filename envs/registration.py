"""The mwm envs in gymnasium's registry, under the ``mwm/`` namespace.

``import envs`` registers ``mwm/<name>-v0`` for every name ``envs.make`` accepts, so
that other libraries can build them with ``gymnasium.make("mwm/toy_catch-v0")``
(keywords as in ``envs.make``: ``gymnasium.make("mwm/atari_pong-v0", size=(84, 84),
render_mode="rgb_array")``). Registering must stay cheap and must not import ale-py or
dm_control (``import envs`` happens in every env worker): the Atari names come from the
ROM files shipped with ale-py and the DMC names from the task decorators in
dm_control's suite sources, both read as files. A name whose simulator refuses it
still fails at ``make`` with the usual one-line error.
"""

from __future__ import annotations

import importlib.util
import os
import re

import gymnasium as gym

NAMESPACE = "mwm"
VERSION = 0
# ROMs ale-py ships without a single-player ALE/<Game>-v5 env (envs.atari.games() leaves them out)
MULTIPLAYER_ONLY = frozenset({"combat", "joust", "maze_craze", "warlords"})
_DMC_TASK = re.compile(r"@SUITE\.add\([^)]*\)\s*\ndef\s+(\w+)\s*\(")


def gym_id(name: str) -> str:
    """``toy_catch`` -> ``mwm/toy_catch-v0``."""
    return f"{NAMESPACE}/{name}-v{VERSION}"


def make_registered(name: str, render_mode: str | None = None, **overrides) -> gym.Env:
    """Entry point of every registered id: ``envs.make(name, render_mode=..., **overrides)``."""
    import envs

    return envs.make(name, render_mode=render_mode, **overrides)


make_registered.metadata = {"render_modes": ["rgb_array"], "render_fps": 15}


def _package_dir(package: str) -> str | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def atari_names() -> list[str]:
    """``atari_<rom>`` for every single-player ROM file ale-py ships (none when ale-py is absent)."""
    folder = _package_dir("ale_py")
    roms = os.path.join(folder, "roms") if folder else ""
    if not os.path.isdir(roms):
        return []
    return sorted(f"atari_{name[:-4]}" for name in os.listdir(roms)
                  if name.endswith(".bin") and name[:-4] not in MULTIPLAYER_ONLY)


def dmc_names() -> list[str]:
    """``dmc_<domain>_<task>`` for every task dm_control's suite registers (none when absent)."""
    folder = _package_dir("dm_control")
    suite = os.path.join(folder, "suite") if folder else ""
    if not os.path.isdir(suite):
        return []
    names = []
    for file in sorted(os.listdir(suite)):
        if file.endswith(".py") and not file.startswith("_"):
            with open(os.path.join(suite, file), encoding="utf-8") as source:
                names += [f"dmc_{file[:-3]}_{task}" for task in _DMC_TASK.findall(source.read())]
    return names


def register_all() -> list[str]:
    """Register every env under ``mwm/``; returns the ids (registering twice is harmless)."""
    from envs import toy

    ids = []
    for name in toy.names() + atari_names() + dmc_names():
        env_id = gym_id(name)
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=make_registered, kwargs={"name": name})
        ids.append(env_id)
    return ids
