"""The schemas of configs/merge/*.yaml (`runtime merge`, `merge sweep`) and configs/merge/adapters/*.yaml."""

from __future__ import annotations

import itertools
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.config import Frozen, TaskName, config_kind


class MergeModel(BaseModel):
    """One input: ``model`` (a store name or directory; LoRA experts are folded first) and its per-model
    mergekit parameters (weight, density, epsilon...), checked against the method's spec."""

    model_config = ConfigDict(frozen=True, extra="allow")
    model: str

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MergeSweep(Frozen):
    """A grid of merge candidates, each scored on the validation split; the best is kept."""

    weights: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)])  # the paper
    densities: list[float] = Field(default_factory=lambda: [0.5])  # ignored by methods without density
    tasks: list[TaskName] = Field(default_factory=list)  # scored tasks; default: one per merged expert
    limit: int = Field(40, gt=0)  # validation items per task per candidate: more = steadier, slower
    max_tokens: dict[TaskName, int] = Field(default_factory=dict)  # caps on tasks.yaml's max_new_tokens while
    # scoring (generation's 256 tokens dominate a sweep's time; the bench caps its answers the same way)
    grid: list[dict[str, Any]] = Field(default_factory=list)  # more candidates: other methods and settings
    # ({method, weight, density, parameters}; a list is swept), checked against mergekit by check_grid below
    objective: Literal["mean_retention", "mean_score"] = "mean_retention"  # retention: (score - base) / (expert
    # - base) per task (merge/selection.py); either way a candidate below the base on a task is rejected
    score_test: bool = True  # score the chosen merge on `limit` test items too (the bench scores test itself)


@config_kind("merge")
class MergeConfig(Frozen):
    name: str  # the artifact's name in the model store
    base_model: str  # the pre-trained model the experts were tuned from (task vectors are relative to it)
    method: str  # any mergekit method: linear, task_arithmetic, ties, dare_linear, dare_ties, della, slerp...
    models: list[MergeModel] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)  # method-wide: lambda, normalize, t, ...
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the merge's arithmetic
    # the stored weights (None: dtype). bfloat16 where the model is served in it: the same served bits as a float32
    # merge cast at load (test_merge), half the disk and the writes (a Qwen 0.5B candidate: 23 vs 30 s on 2 cores)
    out_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    seed: int = 0  # DARE / DELLA drop entries at random
    output_dir: str | None = None  # default: $MIXMERGE_HOME/models/NAME
    sweep: MergeSweep | None = None  # used by `runtime merge sweep`
    NOT_RECIPE: ClassVar[frozenset[str]] = frozenset({"output_dir", "sweep.score_test"})

    @property
    def recipe_inputs(self) -> list[str]:
        """The artifacts it is built from (a finished merge is stale once one of them is rebuilt)."""
        return [self.base_model, *(m.model for m in self.models)]

    @model_validator(mode="after")
    def _check_against_mergekit(self) -> MergeConfig:
        from merge.plans import check_plan

        problems = check_plan(self.method, [{"model": m.model, **m.parameters} for m in self.models],
                              self.parameters)
        if self.sweep and self.sweep.grid:
            problems += check_grid(self.sweep.grid, [m.model for m in self.models])
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ---------------------------------------------------------------------------------- merge/adapters/*.yaml
class WeightedAdapter(Frozen):
    adapter: str  # a LoRA expert from the store
    weight: float = 1.0


@config_kind("adapters")
class AdapterMergeConfig(Frozen):
    """One adapter made from several LoRA adapters with PEFT ``add_weighted_adapter`` (the merged-adapter
    deployment): the base model stays shared and a single adapter serves every task."""

    name: str
    base_model: str
    combination: Literal["linear", "ties", "dare_linear", "dare_ties", "cat", "svd", "ties_svd", "dare_linear_svd",
                         "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"] = "linear"
    adapters: list[WeightedAdapter] = Field(min_length=2)
    density: float | None = Field(None, gt=0, le=1)  # ties / dare / magnitude_prune: share of entries kept
    svd_rank: int | None = Field(None, gt=0)  # *_svd: rank of the result (default: the largest input rank)
    majority_sign_method: Literal["total", "frequency"] = "total"
    seed: int = 0  # dare drops entries at random

    @property
    def recipe_inputs(self) -> list[str]:
        return [self.base_model, *(a.adapter for a in self.adapters)]

    @model_validator(mode="after")
    def _density_where_used(self) -> AdapterMergeConfig:
        pruning = ("ties", "dare", "magnitude_prune")
        if self.combination.startswith(pruning) and self.density is None:
            raise ValueError(f"combination '{self.combination}' needs density (e.g. 0.5)")
        if not self.combination.startswith(pruning) and self.density is not None:
            raise ValueError(f"combination '{self.combination}' does not use density; remove it")
        return self


# ------------------------------------------------------------------------------- sweep.grid (merge/grid.py)
class GridEntry(BaseModel):
    """One line of ``sweep.grid``: a method and the values to try (a scalar is a one-value list)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: str
    weight: list[float] = Field(default_factory=lambda: [1.0], min_length=1)  # on every expert alike
    density: list[float] = Field(default_factory=list)  # per expert, for methods that trim (ties, dare_*, della)
    parameters: dict[str, Any] = Field(default_factory=dict)  # shared; a list value is swept

    @field_validator("weight", "density", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return value if isinstance(value, list) else [value]

    def shared_settings(self) -> list[dict[str, Any]]:
        """Every combination of the shared parameters (a list value is one axis)."""
        keys = sorted(self.parameters)
        axes = [v if isinstance(v, list) else [v] for v in (self.parameters[k] for k in keys)]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]


def check_grid(grid: list[dict[str, Any]], model_names: list[str]) -> list[str]:
    """Every problem with a sweep grid, as 'sweep.grid.N...' messages (empty when every candidate is valid)."""
    from merge.plans import check_plan

    problems: list[str] = []
    for i, raw in enumerate(grid):
        try:
            entry = GridEntry.model_validate(raw)
        except ValidationError as e:
            problems.extend(f"sweep.grid.{i}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            continue
        seen: set[str] = set()
        for models, shared in _plans(entry, model_names):
            for problem in check_plan(entry.method, models, shared):
                problem = re.sub(r"^models\.\d+\.", "models.*.", problem)  # every expert is set alike
                if problem not in seen:
                    seen.add(problem)
                    problems.append(f"sweep.grid.{i}: {problem}")
    return problems


def _plans(entry: GridEntry, model_names: list[str]):
    for weight, density, shared in itertools.product(entry.weight, entry.density or [None], entry.shared_settings()):
        extra = {"weight": weight} | ({} if density is None else {"density": density})
        yield [{"model": name, **extra} for name in model_names], shared
