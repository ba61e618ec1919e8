from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from merge.sweep import objective, run_sweep, weight_grid
from runtime.config import MergeConfig
from runtime.models import ModelStore


def test_weight_grid_is_the_papers_pairs_and_a_simplex_for_more():
    pairs = weight_grid(2, [round(0.1 * i, 1) for i in range(1, 10)])
    assert len(pairs) == 9 and pairs[0] == (0.1, 0.9) and all(abs(a + b - 1) < 1e-9 for a, b in pairs)
    four = weight_grid(4, [0.25, 0.4, 0.2])
    assert (0.25, 0.25, 0.25, 0.25) in four and (0.4, 0.2, 0.2, 0.2) in four and len(four) == 5


def test_objective_is_mean_retention_over_tasks_with_a_known_expert():
    assert objective({"a": 5.0, "b": 2.0}, {"a": 10.0, "b": 2.0}, "mean_retention") == pytest.approx(0.75)
    assert objective({"a": 5.0, "b": 2.0}, {"a": 10.0, "b": 0.0}, "mean_retention") == pytest.approx(0.5)
    assert objective({"a": 5.0, "b": 2.0}, {}, "mean_score") == pytest.approx(3.5)


def test_the_sweep_keeps_the_argmax_of_a_scripted_objective(merge_home, tmp_path):
    calls: list[tuple[str, str]] = []

    def scripted(model: Path, adapter, tasks, split, limit, out):
        calls.append((model.name, split))
        manifest_path = model / "manifest.json"
        inputs = json.loads(manifest_path.read_text()).get("inputs") if manifest_path.is_file() else None
        w0 = inputs[0]["weight"] if inputs else 0.0
        return {t: 10 - 100 * (w0 - 0.3) ** 2 for t in tasks}  # peaks at weight 0.3 on the first expert

    config = MergeConfig(name="swept", base_model="tiny", method="linear",
                         models=[{"model": "exp-a", "weight": 0.5}, {"model": "exp-b", "weight": 0.5}],
                         sweep={"weights": [0.1, 0.3, 0.5, 0.7, 0.9], "tasks": ["completion"], "limit": 2,
                                "objective": "mean_score"})
    summary = run_sweep(config, tmp_path / "sweep", score=scripted)
    assert summary["weights"] == [0.3, 0.7] and summary["candidates"] == 5
    store = ModelStore()
    names = [e.name for e in store.list()]
    assert "swept" in names and not any(n.startswith("swept--") for n in names)  # the others are deleted
    assert json.loads((store.get("swept").path / "manifest.json").read_text())["name"] == "swept"
    assert [s for _, s in calls].count("test") == 1 and calls[-1] == ("swept", "test")  # only the chosen is tested
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert len(rows) == 5 and {float(r["w0"]) for r in rows} == {0.1, 0.3, 0.5, 0.7, 0.9}
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000


def test_the_sweep_scores_with_its_token_caps(merge_home, tmp_path, monkeypatch):
    import merge.sweep

    caps = []
    monkeypatch.setattr(merge.sweep, "eval_score", lambda model, adapter, tasks, split, limit, out, max_tokens=None:
                        caps.append(max_tokens) or dict.fromkeys(tasks, 1.0))
    config = MergeConfig(name="capped", base_model="tiny", method="linear",
                         models=[{"model": "exp-a", "weight": 0.5}, {"model": "exp-b", "weight": 0.5}],
                         sweep={"weights": [0.3, 0.7], "tasks": ["completion"], "limit": 2,
                                "objective": "mean_score", "max_tokens": {"completion": 5}})
    summary = run_sweep(config, tmp_path / "sweep")
    assert len(caps) == 3 and all(c == {"completion": 5} for c in caps)  # two candidates, then the test split
    assert summary["max_tokens"] == {"completion": 5}


def test_the_test_split_is_skipped_when_asked(merge_home, tmp_path):
    splits = []
    config = MergeConfig(name="untested", base_model="tiny", method="linear",
                         models=[{"model": "exp-a", "weight": 0.5}, {"model": "exp-b", "weight": 0.5}],
                         sweep={"weights": [0.3, 0.7], "tasks": ["completion"], "limit": 2,
                                "objective": "mean_score", "score_test": False})
    summary = run_sweep(config, tmp_path / "sweep",
                        score=lambda model, adapter, tasks, split, *a: splits.append(split) or {"completion": 1.0})
    assert splits == ["val", "val"] and summary["chosen_test"] is None
    assert ModelStore().has("untested")


def test_retention_without_expert_baselines_is_refused(merge_home, tmp_path):
    config = MergeConfig(name="swept2", base_model="tiny", method="linear",
                         models=[{"model": "exp-a", "weight": 0.5}, {"model": "exp-b", "weight": 0.5}],
                         sweep={"weights": [0.5], "tasks": ["completion"]})
    with pytest.raises(ValueError, match="set sweep.objective: mean_score"):
        run_sweep(config, tmp_path / "s", score=lambda *a: {"completion": 1.0})
