"""Stops a run whose updates keep producing NaN or inf."""

from __future__ import annotations

import sys
from typing import Dict

from mwm.errors import UserError


class TrainingDiverged(UserError):
    """Too many non-finite updates in a row; the last good checkpoint is kept."""


class NonFiniteGuard:
    """Counts consecutive updates whose optimisers skipped a non-finite loss or gradient.

    Agents report skipped updates in metrics keys ending in ``/nonfinite`` (1 when that
    optimiser skipped its step). Each skip is printed at once and counted in ``total``
    (the training loop logs it as ``train/nonfinite_total``); ``limit`` in a row stops
    the run.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_row = 0
        self.total = 0

    def check(self, metrics: Dict, step: int) -> Dict:
        flags = [k for k, v in metrics.items() if k.endswith("/nonfinite") and float(v) > 0]
        if not flags:
            self.in_row = 0
            return metrics
        self.in_row += 1
        self.total += 1
        print(f"warning: non-finite loss or gradient at step {step} ({', '.join(flags)}): update skipped "
              f"({self.in_row} in a row, limit {self.limit})", file=sys.stderr)
        if self.in_row >= self.limit:
            raise TrainingDiverged(f"{self.in_row} non-finite updates in a row at step {step}: the run stopped and "
                                   "the last checkpoint holds finite weights; lower the learning rates or check "
                                   "the inputs, then re-run to resume")
        return metrics
