"""Stops a run whose updates keep producing NaN or inf."""

from __future__ import annotations

import sys
from typing import Dict

from mwm.errors import UserError
from mwm.logger import line_start

CUDA_READ_EVERY = 25  # updates between host reads of the skip counters on CUDA


class TrainingDiverged(UserError):
    """Too many non-finite updates in a row; the last good checkpoint is kept."""


class NonFiniteGuard:
    """Stops the run after ``limit`` consecutive updates skipped for NaN or inf.

    The optimisers skip a non-finite update at once, on the device (mwm/optim.py); the
    agents report each optimiser's streak of consecutive skips in metrics keys ending
    in ``/nonfinite``. Reading those values is a host-device synchronisation, so the
    guard reads them every ``read_every`` updates (1 on CPU, where a read is free;
    ``CUDA_READ_EVERY`` on CUDA). A streak survives between reads, so no run of skips
    is missed; each one read is printed and counted in ``total`` (the training loop
    logs it as ``train/nonfinite_total``).
    """

    def __init__(self, limit: int, read_every: int = 1):
        self.limit = limit
        self.read_every = read_every
        self.in_row = 0
        self.total = 0
        self._unread = 0

    def check(self, metrics: Dict, step: int) -> Dict:
        self._unread += 1
        if self._unread < self.read_every:
            return metrics
        unread, self._unread = self._unread, 0
        streaks = {k: int(float(v)) for k, v in metrics.items() if k.endswith("/nonfinite")}
        streak = max(streaks.values(), default=0)
        if streak == 0:
            self.in_row = 0
            return metrics
        self.total += min(streak, unread)
        self.in_row = streak
        flags = ", ".join(k for k, v in streaks.items() if v)
        print(f"{line_start(sys.stderr)}warning: non-finite loss or gradient at step {step} ({flags}): update skipped "
              f"({self.in_row} in a row, limit {self.limit})", file=sys.stderr)
        if self.in_row >= self.limit:
            raise TrainingDiverged(f"{self.in_row} non-finite updates in a row at step {step}: the run stopped; "
                                   "lower the learning rates (they may change when a run resumes) or check "
                                   "the inputs, then re-run")
        return metrics
