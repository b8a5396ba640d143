"""Aggregates over seeds: mean, bootstrap confidence interval and interquartile mean.

With few seeds (3-5 is typical) the percentile bootstrap of the mean is the interval
rliable recommends reporting alongside the IQM (Agarwal et al., 2021). From fewer than
three values an interval says next to nothing, so there is none: both bounds are NaN
and tables show the values themselves.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
MIN_INTERVAL_VALUES = 3  # no interval from fewer (seeds, usually)


def finite(values: Sequence[float]) -> np.ndarray:
    """The finite entries of ``values`` as float64."""
    array = np.asarray(values, np.float64)
    return array[np.isfinite(array)]


def bootstrap_ci(values: Sequence[float], confidence: float, seed: int = 0,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of the finite ``values``; (NaN, NaN) for
    fewer than ``MIN_INTERVAL_VALUES`` (3) values."""
    data = finite(values)
    if data.size < MIN_INTERVAL_VALUES:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)  # (R,)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean after dropping the lowest and highest quarter
    (floor(n / 4) values each side, as scipy's trim_mean(x, 0.25))."""
    data = np.sort(finite(values))
    if data.size == 0:
        return math.nan
    cut = data.size // 4
    return float(data[cut:data.size - cut].mean())


def summarise(values: Sequence[float], confidence: float) -> dict:
    """``mean``, ``ci_low``, ``ci_high``, ``iqm`` and ``n`` (finite values) of one metric."""
    data = finite(values)
    low, high = bootstrap_ci(data, confidence)
    return {"mean": float(data.mean()) if data.size else math.nan, "ci_low": low, "ci_high": high,
            "iqm": iqm(data), "n": int(data.size)}
