"""The candidates of a merge sweep: the config's own method over a weight simplex, plus a ``sweep.grid`` of other
methods and settings.

A grid entry names a mergekit method and lists the values to try; every combination is one candidate::

    grid:
      - {method: task_arithmetic, weight: [0.5, 0.75, 1.0], parameters: {normalize: false}}
      - {method: ties, weight: 1.0, density: 0.5, parameters: {normalize: false, lambda: [1, 2]}}

``weight`` is put on every expert alike (weight 1.0 with ``normalize: false`` adds each task vector whole: task
arithmetic); ``density`` likewise, for methods that trim; a list under ``parameters`` (mergekit's shared
parameters: lambda, normalize, ...) is swept too. Every candidate is checked against mergekit's own registry
(``merge.plans.check_plan``), so a grid cannot name a method or parameter mergekit would ignore.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from merge.config import GridEntry, MergeConfig, MergeModel


@dataclass(frozen=True)
class Candidate:
    """One merge to score: its store name, the config that builds it, and what was set."""

    name: str
    config: MergeConfig
    method: str
    weights: tuple[float, ...]
    density: float | None = None
    shared: dict[str, Any] = field(default_factory=dict)


def weight_grid(n_models: int, weights: list[float]) -> list[tuple[float, ...]]:
    """Every assignment of the listed weights to the models that sums to 1. Two experts and 0.1..0.9 give the
    paper's grid (w, 1 - w); more experts give points of the simplex, e.g. [0.25, 0.4, 0.2] over four experts
    gives equal weights and each expert in turn at 0.4. An empty list gives none (a sweep of ``grid`` only)."""
    return [c for c in itertools.product(weights, repeat=n_models) if abs(sum(c) - 1) < 1e-6]


def candidates(config: MergeConfig) -> list[Candidate]:
    """The simplex candidates of ``config.method`` (``sweep.weights`` x ``sweep.densities``), then the grid's."""
    if config.sweep is None:
        raise ValueError(f"{config.name} has no `sweep:` section; add one (see configs/merge/*-sweep.yaml)")
    out = _simplex(config)
    for entry in parse_grid(config.sweep.grid):
        out.extend(_expand(config, entry))
    names = [c.name for c in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{config.name}: the sweep lists the same candidate twice ({', '.join(twice)}); "
                         "remove the repeated grid values")
    return out


def parse_grid(grid: list[dict[str, Any]]) -> list[GridEntry]:
    return [GridEntry.model_validate(e) for e in grid]


def _expand(config: MergeConfig, entry: GridEntry) -> list[Candidate]:
    out = []
    for weight, density, shared in itertools.product(entry.weight, entry.density or [None], entry.shared_settings()):
        extra = {"weight": weight} | ({} if density is None else {"density": density})
        models = [MergeModel(model=m.model, **extra) for m in config.models]
        tag = "-".join([entry.method.replace("_", "-"), f"w{weight:g}"]
                       + ([f"d{density:g}"] if density is not None else [])
                       + [f"{k}{_fmt(v)}" for k, v in shared.items()])
        out.append(_candidate(config, tag, entry.method, models, shared, (weight,) * len(models), density))
    return out


def _simplex(config: MergeConfig) -> list[Candidate]:
    sweep = config.sweep
    assert sweep is not None
    per_model = _per_model_params(config.method)
    out = []
    for weights in weight_grid(len(config.models), sweep.weights):
        for density in sweep.densities if "density" in per_model else [None]:
            models = []
            for m, w in zip(config.models, weights, strict=True):
                extra = m.parameters | {"weight": w} | ({} if density is None else {"density": density})
                models.append(MergeModel(model=m.model, **extra))
            tag = "-".join(f"{w:g}" for w in weights) + ("" if density is None else f"-d{density:g}")
            out.append(_candidate(config, tag, config.method, models, dict(config.parameters), weights, density))
    return out


def _candidate(config: MergeConfig, tag: str, method: str, models: list[MergeModel], shared: dict[str, Any],
               weights: tuple[float, ...], density: float | None) -> Candidate:
    name = f"{config.name}--{tag}"
    built = config.model_copy(update={"name": name, "method": method, "models": models, "parameters": shared,
                                      "output_dir": None, "sweep": None})
    return Candidate(name=name, config=built, method=method, weights=tuple(weights), density=density,
                     shared=dict(shared))


def _per_model_params(method: str) -> set[str]:
    from merge.plans import method_specs

    return {p.name for p in method_specs()[method].input_parameters}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float | int) else str(value)
