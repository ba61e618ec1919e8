"""Sweep candidates: the config's weight simplex plus a grid of mergekit methods, checked against mergekit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merge.config import MergeConfig
from merge.grid import candidates
from merge.plans import check_plan
from merge.run import merge
from runtime.config import configs_dir, load_config
from runtime.errors import ConfigError
from runtime.models import ModelStore


def _weights(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out |= load_file(f)
    return out


def test_the_qwen_merged_grid_adds_whole_task_vectors_ties_linear_and_dare():
    config = load_config(configs_dir() / "merge" / "qwen-merged-sweep.yaml", MergeConfig)
    found = {(c.method, c.weights[0], c.density, tuple(sorted(c.shared.items()))) for c in candidates(config)}
    ta = {(w, (("normalize", False),)) for w in (0.5, 0.75, 1.0)}
    assert {(w, s) for m, w, _, s in found if m == "task_arithmetic"} == ta
    assert {(w, d, s) for m, w, d, s in found if m == "ties"} == {
        (1.0, 0.5, (("lambda", lam), ("normalize", False))) for lam in (1.0, 2.0)}
    assert {(m, w) for m, w, _, s in found if m in ("linear", "dare_ties")} == {("linear", 0.25), ("dare_ties", 1.0)}
    assert len(found) == 7
    for cand in candidates(config):
        assert len(set(cand.weights)) == 1 and len(cand.weights) == 4  # the same weight on every expert
        models = [{"model": m.model, **m.parameters} for m in cand.config.models]
        assert check_plan(cand.method, models, cand.config.parameters) == []


def test_the_smollm2_simplex_sweep_is_unchanged():
    config = load_config(configs_dir() / "merge" / "smollm2-merged-sweep.yaml", MergeConfig)
    found = candidates(config)
    assert [c.name for c in found][:2] == ["smollm2-merged--0.25-0.25-0.25-0.25-d0.5",
                                           "smollm2-merged--0.4-0.2-0.2-0.2-d0.5"]
    assert len(found) == 5 and {c.method for c in found} == {"ties"}
    assert all(c.config.parameters == {"normalize": True, "lambda": 1.0} for c in found)


def test_a_grid_that_mergekit_would_ignore_is_refused_with_every_problem(tmp_path):
    path = configs_dir() / "merge" / "qwen-merged-sweep.yaml"
    bad = ["sweep.grid=[{method: tie}, {method: linear, density: 0.5}, {method: ties, parameters: {lamda: 2}}, "
           "{method: ties, wieght: 1}]"]
    with pytest.raises(ConfigError) as info:
        load_config(path, MergeConfig, bad)
    text = str(info.value)
    assert "sweep.grid.0: method: unknown merge method 'tie'; did you mean 'ties'?" in text
    assert "sweep.grid.1: models.*.density: 'linear' has no per-model parameter 'density'" in text
    assert "sweep.grid.2: parameters.lamda: 'ties' has no parameter 'lamda'" in text
    assert "sweep.grid.3.wieght" in text


def test_a_repeated_candidate_is_refused():
    config = MergeConfig(name="twice", base_model="tiny", method="linear",
                         models=[{"model": "exp-a", "weight": 0.5}, {"model": "exp-b", "weight": 0.5}],
                         sweep={"weights": [], "grid": [{"method": "task_arithmetic", "weight": [1.0, 1.0]}]})
    with pytest.raises(ValueError, match="same candidate twice"):
        candidates(config)


def test_grid_candidates_merge_to_base_plus_whole_deltas_and_to_the_average(merge_home):
    config = MergeConfig(name="g", base_model="tiny", method="linear",
                         models=[{"model": "exp-a", "weight": 0.5}, {"model": "exp-b", "weight": 0.5}],
                         sweep={"weights": [], "grid": [
                             {"method": "task_arithmetic", "weight": 1.0, "parameters": {"normalize": False}},
                             {"method": "linear", "weight": 0.5, "parameters": {"normalize": True}}]})
    ta, lin = candidates(config)
    store = ModelStore()
    base, a, b = (_weights(store.get(n).path) for n in ("tiny", "exp-a", "exp-b"))
    merged_ta, merged_lin = _weights(merge(ta.config, store).path), _weights(merge(lin.config, store).path)
    assert set(merged_ta) and set(merged_ta) <= set(base)
    for name in merged_ta:
        torch.testing.assert_close(merged_ta[name], base[name] + (a[name] - base[name]) + (b[name] - base[name]),
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(merged_lin[name], (a[name] + b[name]) / 2, rtol=1e-5, atol=1e-6)
