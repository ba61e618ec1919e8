"""Our merge YAML -> mergekit's ``MergeConfiguration``, checked against mergekit's own method registry.

Method names and parameter names come from mergekit (never a copy of its list): a method's parameter is either
*shared* (mergekit reads it only from the top-level ``parameters``, e.g. ``lambda``, ``normalize``, ``t``) or
*per input* (``weight``, ``density``, ``epsilon``: per model, or a top-level default). A key mergekit would
silently ignore -- an unknown name, or a shared parameter put on one model -- is rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

PAIR_METHODS = ("slerp", "nearswap", "arcee_fusion")  # two inputs, the first is mergekit's base


@lru_cache(maxsize=1)
def method_specs() -> dict[str, Any]:
    from mergekit.merge_methods.registry import registered_methods

    return {m.spec.name: m.spec for m in registered_methods()}


def method_names() -> list[str]:
    return sorted(method_specs())


def check_plan(method: str, models: list[dict[str, Any]], shared: dict[str, Any]) -> list[str]:
    """Every problem with a plan, as messages naming the field and the fix (empty when it is valid)."""
    specs = method_specs()
    if method not in specs:
        import difflib

        close = difflib.get_close_matches(method, list(specs), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return [f"method: unknown merge method '{method}'; {hint}mergekit has: {', '.join(sorted(specs))}"]
    spec = specs[method]
    shared_names = {p.name for p in spec.shared_parameters}
    input_names = {p.name for p in spec.input_parameters}
    problems = []
    for key in shared:
        if key not in shared_names | input_names:
            problems.append(f"parameters.{key}: '{method}' has no parameter '{key}' (mergekit would ignore it); "
                            f"known: {', '.join(sorted(shared_names | input_names)) or 'none'}")
    for i, model in enumerate(models):
        for key in model:
            if key == "model":
                continue
            if key in shared_names:
                problems.append(f"models.{i}.{key}: mergekit reads '{key}' only from the top-level parameters; "
                                "move it there")
            elif key not in input_names:
                problems.append(f"models.{i}.{key}: '{method}' has no per-model parameter '{key}' "
                                f"(known: {', '.join(sorted(input_names)) or 'none'})")
    for p in spec.input_parameters:
        if p.required and p.name not in shared and any(p.name not in m for m in models):
            problems.append(f"models: '{method}' needs '{p.name}' on every model (or a default under parameters)")
    for p in spec.shared_parameters:
        if p.required and p.name not in shared:
            problems.append(f"parameters.{p.name}: '{method}' needs it")
    contract = spec.contract
    n = len(models) + (0 if method in PAIR_METHODS or contract.base.value in ("ignored", "forbidden") else 1)
    if n < contract.min_inputs or (contract.max_inputs is not None and n > contract.max_inputs):
        want = contract.min_inputs if contract.max_inputs == contract.min_inputs else f"at least {contract.min_inputs}"
        problems.append(f"models: '{method}' merges {want} inputs"
                        + ("" if method in PAIR_METHODS else " counting the base") + f", got {n}")
    return problems


def to_mergekit(method: str, base: Path, models: list[tuple[Path, dict[str, Any]]], shared: dict[str, Any],
                dtype: str, resolve: Callable[[Path], str] = str, out_dtype: str | None = None):
    """Build the mergekit configuration from resolved model directories."""
    from mergekit.config import MergeConfiguration

    spec = method_specs()[method]
    entries = [{"model": resolve(path), "parameters": dict(params) or None} for path, params in models]
    data: dict[str, Any] = {"merge_method": method, "models": entries, "dtype": dtype, "out_dtype": out_dtype or dtype,
                            "parameters": dict(shared) or None}
    if method in PAIR_METHODS:
        data["base_model"] = entries[0]["model"]
    elif spec.contract.base.value not in ("ignored", "forbidden"):
        data["base_model"] = resolve(base)
    return MergeConfiguration.model_validate(data)
