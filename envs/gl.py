"""Choosing MuJoCo's headless OpenGL backend before dm_control is imported.

dm_control reads `MUJOCO_GL` once, when it is first imported. If the user has not set
it, we try EGL (GPU or Mesa) and then OSMesa (software), each in a short subprocess so
that a failed attempt leaves this process clean, and export the first that works. The
variable then also reaches every worker process started afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, MutableMapping

from mwm.errors import UserError

BACKENDS = ("egl", "osmesa")
INSTALL_HINT = "install Mesa EGL: apt-get install libegl1 (or libosmesa6 for MUJOCO_GL=osmesa)"
PROBE_CODE = "from dm_control import _render; context = _render.Renderer(16, 16); context.free()"


def probe_backend(backend: str, timeout: float = 120.0) -> bool:
    """True when dm_control can create a 16x16 offscreen context with MUJOCO_GL=backend."""
    env = dict(os.environ, MUJOCO_GL=backend)
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE_CODE],
            env=env, capture_output=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def choose_backend(
    environ: MutableMapping[str, str],
    probe: Callable[[str], bool] = probe_backend,
) -> str:
    """Return the backend to use, setting environ['MUJOCO_GL'] to it when it was unset.

    A backend the user set is kept untouched. Otherwise EGL, then OSMesa, is probed;
    UserError (with the packages to install) when neither works.
    """
    chosen = environ.get("MUJOCO_GL", "")
    if chosen:
        return chosen
    for backend in BACKENDS:
        if probe(backend):
            environ["MUJOCO_GL"] = backend
            return backend
    raise UserError(f"no headless OpenGL for MuJoCo (tried MUJOCO_GL=egl and osmesa): {INSTALL_HINT}")


def ensure_headless_gl() -> str:
    """Pick the backend for this process (see `choose_backend`) unless dm_control already did."""
    render_module = sys.modules.get("dm_control._render")
    if render_module is not None:
        return str(render_module.BACKEND or "")
    return choose_backend(os.environ)
