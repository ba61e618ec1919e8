"""Data mixing: how many items of each task go into one multi-task training set.

Strategies (the share of task t, with n_t items available):
- ``concat``: natural sizes, every item once (the paper's data mix);
- ``balanced``: equal shares;
- ``weighted``: explicit shares from the config (normalised);
- ``temperature``: share proportional to n_t ** (1 / T) (T=1 is concat's shares, large T tends to balanced).
For every strategy but ``concat`` the total is ``total`` items (default: all items); a task asked for more items
than it has repeats its items in a fresh order each pass.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["concat", "balanced", "weighted", "temperature"]
STRATEGIES: tuple[str, ...] = ("concat", "balanced", "weighted", "temperature")


@dataclass(frozen=True)
class Mixture:
    picks: list[tuple[str, int]]  # (task, item index) in training order
    shares: dict[str, float]  # the strategy's target shares

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(task for task, _ in self.picks).items()))


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
    """Pick items per task by the strategy's shares, then shuffle them together (deterministic in ``seed``)."""
    shares = target_shares(sizes, strategy, weights, temperature)
    total = sum(sizes.values()) if total is None else total
    if strategy == "concat" and total >= sum(sizes.values()):
        counts = dict(sizes)
    else:
        counts = _apportion(shares, total)
    rng = random.Random(seed)
    picks: list[tuple[str, int]] = []
    for task, count in counts.items():
        picks.extend((task, i) for i in _draw(sizes[task], count, rng))
    rng.shuffle(picks)
    return Mixture(picks, shares)


def _apportion(shares: dict[str, float], total: int) -> dict[str, int]:
    """Largest-remainder rounding: counts add up to ``total`` exactly."""
    exact = {t: s * total for t, s in shares.items()}
    counts = {t: int(v) for t, v in exact.items()}
    for t in sorted(exact, key=lambda t: exact[t] - counts[t], reverse=True)[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


def _draw(n: int, count: int, rng: random.Random) -> list[int]:
    """``count`` indices from range(n): without repetition while possible, then further shuffled passes."""
    out: list[int] = []
    while len(out) < count and n > 0:
        order = list(range(n))
        rng.shuffle(order)
        out.extend(order[: count - len(out)])
    return out
