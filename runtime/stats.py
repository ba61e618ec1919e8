"""Uncertainty for the bench's accuracy numbers.

- A 0/1 metric (review's line accuracy, HumanEval pass@1, any share of items that succeed) gets the exact
  Clopper-Pearson interval: a percentile bootstrap collapses to [0, 0] on 0/29, where the exact 95% upper bound
  is 11.9%. Such metrics are ``Proportion`` statistics, which carry their successes and trials.
- Any other metric (chrF++, BLEU, edit similarity) gets the percentile-bootstrap interval over test items.
- Two options scored on the same items are compared by a paired bootstrap (the same resampled items for both, so
  item difficulty cancels out), with a two-sided bootstrap p-value.
- A family of such comparisons is corrected with Holm's step-down method, so that calling "k of m differences are
  real" keeps the family-wise error rate at 5% (the report compares one option against every other).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Statistic = Callable[[Sequence[int]], float]  # the metric computed on a (resampled) list of item indices
IntervalMethod = Literal["clopper-pearson", "bootstrap"]


def mean_of(values: Sequence[float]) -> Statistic:
    array = np.asarray(values, dtype=float)
    return lambda idx: float(array[np.asarray(idx, dtype=int)].mean()) if len(idx) else 0.0


@dataclass(frozen=True)
class Proportion:
    """A 0/1 metric as a statistic: ``outcomes[i]`` is True/False, or None for an item the metric does not count
    (review's line accuracy skips clean items). Called on item indices it gives the share of counted items that
    succeed, x100 (0 when none is counted), like ``mean_of``; ``counts`` gives (successes, trials)."""

    outcomes: tuple[bool | None, ...]

    def __call__(self, idx: Sequence[int]) -> float:
        picked = [self.outcomes[i] for i in idx if self.outcomes[i] is not None]
        return 100.0 * sum(picked) / len(picked) if picked else 0.0

    def counts(self) -> tuple[int, int]:
        counted = [o for o in self.outcomes if o is not None]
        return sum(counted), len(counted)


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval for a binomial proportion, as shares in [0, 1]: the beta quantiles
    Beta(alpha/2; k, n-k+1) and Beta(1-alpha/2; k+1, n-k), with 0 for k = 0 and 1 for k = n. 0/29 gives
    [0, 0.119]. No trials: [0, 1] (nothing is known)."""
    from scipy.stats import beta  # a dependency of mergekit, so always installed; imported late (slow import)

    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be within 0..trials, got {successes} of {trials}")
    if trials == 0:
        return (0.0, 1.0)
    alpha = 1 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def _resamples(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_se(stat: Statistic, n: int, resamples: int = 1000, seed: int = 0) -> float:
    """The bootstrap standard error of ``stat`` over n items."""
    return float(np.std([stat(idx) for idx in _resamples(n, resamples, seed)])) if n else 0.0


def bootstrap_ci(stat: Statistic, n: int, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of ``stat`` over ``resamples`` resamples of n items with replacement."""
    if n == 0:
        return (0.0, 0.0)
    values = [stat(idx) for idx in _resamples(n, resamples, seed)]
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def confidence_interval(stat: Statistic, n: int, resamples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, IntervalMethod]:
    """(low, high, method) on the statistic's own scale: exact for a ``Proportion`` (x100, like its value),
    the percentile bootstrap over n items for anything else."""
    if isinstance(stat, Proportion):
        low, high = clopper_pearson(*stat.counts(), level=level)
        return 100 * low, 100 * high, "clopper-pearson"
    return (*bootstrap_ci(stat, n, resamples, seed, level), "bootstrap")


def bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p-value of resampled differences: the share on the far side of zero,
    doubled (identical options, all differences 0, give 1)."""
    return min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))


def paired_difference(stat_a: Statistic, stat_b: Statistic, n: int, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, float | bool]:
    """a - b on the same items, with its paired-bootstrap interval and a two-sided bootstrap p-value.
    ``significant`` is for this comparison alone; a family of them goes through ``holm``."""
    if n == 0:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "significant": False}
    return paired_normalized_difference({"": stat_a}, {"": stat_b}, {"": n}, {"": 1.0}, resamples, seed, level)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm's step-down correction of a family of m p-values: sorted ascending, the i-th (from 0) is multiplied
    by m - i, made non-decreasing, capped at 1. Returns (adjusted p-values, reject flags) in the input order;
    a hypothesis is rejected where its adjusted p-value is at most ``alpha``."""
    if any(not 0 <= p <= 1 for p in p_values):
        raise ValueError(f"p-values must lie in [0, 1], got {list(p_values)}")
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted, [p <= alpha for p in adjusted]


def paired_normalized_difference(stats_a: dict[str, Statistic], stats_b: dict[str, Statistic], n: dict[str, int],
                                 scale: dict[str, float], resamples: int = 1000, seed: int = 0,
                                 level: float = 0.95) -> dict[str, float | bool]:
    """The mean over tasks of (a - b) / scale[task], each task's items resampled on their own and paired between
    a and b: the decision rule's normalized gain compared between two options, with its interval and p-value
    (``paired_difference`` is its one-task, unscaled case)."""
    tasks = list(scale)
    everything = {t: list(range(n[t])) for t in tasks}
    diff = float(np.mean([(stats_a[t](everything[t]) - stats_b[t](everything[t])) / scale[t] for t in tasks]))
    draws = {t: _resamples(n[t], resamples, seed + i) for i, t in enumerate(tasks)}
    diffs = np.array([np.mean([(stats_a[t](draws[t][r]) - stats_b[t](draws[t][r])) / scale[t] for t in tasks])
                      for r in range(resamples)])
    tail = 100 * (1 - level) / 2
    low, high = float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail))
    return {"diff": diff, "ci_low": low, "ci_high": high, "p_value": bootstrap_p_value(diffs),
            "significant": bool(low > 0 or high < 0)}
