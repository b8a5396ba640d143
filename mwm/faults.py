"""Deterministic fault injection for the crash tests: SIGKILL this process at a named point.

Set ``MWM_KILL_AT=<point>:<pattern>`` in a run's environment and the process kills
itself with SIGKILL the first time :func:`maybe_kill` is called with that ``point`` and
a ``tag`` matching the shell-style ``pattern``. The points are:

    step    after an env step was stored, before anything else     tag: agent step
    update  after an update changed the weights, before it is counted  tag: update index
    write   inside an atomic write, data written, before the rename  tag: file name

e.g. ``MWM_KILL_AT=step:25``, ``MWM_KILL_AT=update:4``,
``MWM_KILL_AT='write:checkpoint-*.pt'``, ``MWM_KILL_AT='write:*-3-*.npz'``. Unset (the
normal case) it costs one dictionary lookup. Under torchrun every rank reads it;
``MWM_KILL_RANK=k`` limits it to rank k. This module is a leaf (standard library
only) so that ``mwm.atomic`` may call it.
"""

import fnmatch
import os
import signal
import sys

ENV_VAR = "MWM_KILL_AT"
RANK_VAR = "MWM_KILL_RANK"


def maybe_kill(point: str, tag: object) -> None:
    """SIGKILL this process if ``MWM_KILL_AT`` names ``point`` and ``tag`` matches its pattern."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    if os.environ.get(RANK_VAR, os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return  # under torchrun, MWM_KILL_RANK=k kills rank k alone
    wanted, _, pattern = spec.partition(":")
    if wanted == point and fnmatch.fnmatchcase(str(tag), pattern):
        print(f"fault injection: SIGKILL at {point}:{tag}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
