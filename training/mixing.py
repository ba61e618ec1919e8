"""Data mixing: how many items of each task go into one multi-task training set.

Strategies (the share of task t, with n_t items available):
- ``concat``: natural sizes, every item once (the paper's data mix);
- ``balanced``: equal shares;
- ``weighted``: explicit shares from the config (normalised);
- ``temperature``: share proportional to n_t ** (1 / T) (T=1 is concat's shares, large T tends to balanced).
For every strategy but ``concat`` the total is ``total`` items (default: all items); a task asked for more items
than it has repeats its items in a fresh order each pass.

Each task's items come from its own seeded stream (``Mixture.draws``), which depends only on the seed, the task
and its size: a task given the same count in two mixtures gets the same items. So a mix whose per-task counts are
the experts' (``weighted`` with each expert's max_steps as its weight and ``total`` their rows) trains on exactly
the union of the experts' rows (``training/budget.py`` checks shipped configs for it).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Literal

Strategy = Literal["concat", "balanced", "weighted", "temperature"]
STRATEGIES: tuple[str, ...] = ("concat", "balanced", "weighted", "temperature")


@dataclass(frozen=True)
class Mixture:
    counts: dict[str, int]  # items per task
    shares: dict[str, float]  # the strategy's target shares
    sizes: dict[str, int]  # items available per task
    seed: int = 0

    def draws(self, task: str) -> Iterator[int]:
        """Endless item indices of ``task``: seeded passes over all its items, each in a fresh order. The
        first ``counts[task]`` are the task's picks; the ones after replace picks that turn out unusable."""
        rng = random.Random(f"{self.seed}/{task}")
        while self.sizes[task] > 0:
            order = list(range(self.sizes[task]))
            rng.shuffle(order)
            yield from order

    @property
    def picks(self) -> list[tuple[str, int]]:
        """(task, item index): each task's first ``counts[task]`` draws, shuffled together."""
        picks = [(task, i) for task, count in self.counts.items() for i in islice(self.draws(task), count)]
        random.Random(self.seed).shuffle(picks)
        return picks


def target_shares(sizes: dict[str, int], strategy: str, weights: dict[str, float] | None = None,
                  temperature: float = 1.0) -> dict[str, float]:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mixing strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
    if strategy == "concat":
        raw = {t: float(n) for t, n in sizes.items()}
    elif strategy == "balanced":
        raw = {t: 1.0 for t in sizes}
    elif strategy == "weighted":
        if not weights or set(weights) != set(sizes):
            raise ValueError(f"'weighted' mixing needs a weight for each task: {', '.join(sizes)}")
        raw = {t: float(weights[t]) for t in sizes}
    else:
        raw = {t: float(n) ** (1.0 / temperature) for t, n in sizes.items()}
    total = sum(raw.values())
    return {t: v / total for t, v in raw.items()}


def mix(sizes: dict[str, int], strategy: str, total: int | None = None, seed: int = 0,
        weights: dict[str, float] | None = None, temperature: float = 1.0) -> Mixture:
    """How many items of each task by the strategy's shares; which ones is deterministic in ``seed`` and the task."""
    shares = target_shares(sizes, strategy, weights, temperature)
    total = sum(sizes.values()) if total is None else total
    if strategy == "concat" and total >= sum(sizes.values()):
        counts = dict(sizes)
    else:
        counts = _apportion(shares, total)
    return Mixture(dict(sorted((t, c) for t, c in counts.items() if c > 0)), shares, dict(sizes), seed)


def _apportion(shares: dict[str, float], total: int) -> dict[str, int]:
    """Largest-remainder rounding: counts add up to ``total`` exactly."""
    exact = {t: s * total for t, s in shares.items()}
    counts = {t: int(v) for t, v in exact.items()}
    for t in sorted(exact, key=lambda t: exact[t] - counts[t], reverse=True)[: total - sum(counts.values())]:
        counts[t] += 1
    return counts
