"""Uncertainty for the bench's accuracy numbers: percentile-bootstrap confidence intervals over test items, and
paired bootstrap differences between two options scored on the same items (the same resampled items for both, so
item difficulty cancels out). A difference is called significant when its 95% interval excludes zero."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Statistic = Callable[[Sequence[int]], float]  # the metric computed on a (resampled) list of item indices


def mean_of(values: Sequence[float]) -> Statistic:
    array = np.asarray(values, dtype=float)
    return lambda idx: float(array[np.asarray(idx, dtype=int)].mean()) if len(idx) else 0.0


def _resamples(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(stat: Statistic, n: int, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of ``stat`` over ``resamples`` resamples of n items with replacement."""
    if n == 0:
        return (0.0, 0.0)
    values = [stat(idx) for idx in _resamples(n, resamples, seed)]
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def paired_difference(stat_a: Statistic, stat_b: Statistic, n: int, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, float | bool]:
    """a - b on the same items, with its paired-bootstrap interval and a two-sided bootstrap p-value."""
    everything = list(range(n))
    diff = stat_a(everything) - stat_b(everything)
    if n == 0:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "significant": False}
    diffs = np.array([stat_a(idx) - stat_b(idx) for idx in _resamples(n, resamples, seed)])
    tail = 100 * (1 - level) / 2
    low, high = float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail))
    # share of resampled differences on the far side of zero, doubled (the percentile-bootstrap p-value)
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return {"diff": float(diff), "ci_low": low, "ci_high": high, "p_value": p,
            "significant": bool(low > 0 or high < 0)}
