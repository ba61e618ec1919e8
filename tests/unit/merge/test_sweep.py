from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from merge.config import MergeConfig
from merge.grid import weight_grid
from merge.sweep import run_sweep
from runtime.errors import ConfigError
from runtime.models import ModelStore


def test_weight_grid_is_the_papers_pairs_and_a_simplex_for_more():
    pairs = weight_grid(2, [round(0.1 * i, 1) for i in range(1, 10)])
    assert len(pairs) == 9 and pairs[0] == (0.1, 0.9) and all(abs(a + b - 1) < 1e-9 for a, b in pairs)
    four = weight_grid(4, [0.25, 0.4, 0.2])
    assert (0.25, 0.25, 0.25, 0.25) in four and (0.4, 0.2, 0.2, 0.2) in four and len(four) == 5


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
    summary = run_sweep(config, tmp_path / "sweep", ModelStore(), score=scripted)
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
    summary = run_sweep(config, tmp_path / "sweep", ModelStore())
    assert len(caps) == 4 and all(c == {"completion": 5} for c in caps)  # base, two candidates, the test split
    assert summary["max_tokens"] == {"completion": 5}


def test_the_test_split_is_skipped_when_asked(merge_home, tmp_path):
    splits = []
    config = MergeConfig(name="untested", base_model="tiny", method="linear",
                         models=[{"model": "exp-a", "weight": 0.5}, {"model": "exp-b", "weight": 0.5}],
                         sweep={"weights": [0.3, 0.7], "tasks": ["completion"], "limit": 2,
                                "objective": "mean_score", "score_test": False})
    summary = run_sweep(config, tmp_path / "sweep", ModelStore(),
                        score=lambda model, adapter, tasks, split, *a: splits.append(split) or {"completion": 1.0})
    assert splits == ["val", "val", "val"] and summary["chosen_test"] is None  # the base, two candidates
    assert ModelStore().has("untested")


def test_retention_without_expert_baselines_is_refused(merge_home, tmp_path):
    config = MergeConfig(name="swept2", base_model="tiny", method="linear",
                         models=[{"model": "exp-a", "weight": 0.5}, {"model": "exp-b", "weight": 0.5}],
                         sweep={"weights": [0.5], "tasks": ["completion"]})
    with pytest.raises(ConfigError, match="set sweep.objective: mean_score"):
        run_sweep(config, tmp_path / "s", ModelStore(), score=lambda *a: {"completion": 1.0})


def _grid_config(name: str, **sweep) -> MergeConfig:
    return MergeConfig(name=name, base_model="tiny", method="task_arithmetic",
                       models=[{"model": "exp-gen", "weight": 1.0}, {"model": "exp-sum", "weight": 1.0}],
                       sweep=sweep | {"weights": [], "limit": 2, "score_test": False, "grid": [
                           {"method": "task_arithmetic", "weight": [0.5, 1.0], "parameters": {"normalize": False}},
                           {"method": "ties", "weight": 1.0, "density": 0.5,
                            "parameters": {"normalize": False, "lambda": [1.0, 2.0]}}]})


def _scripted(table: dict[tuple, dict[str, float]], calls: list[str]):
    """Scores by what was scored: the base, an expert (by name), or a candidate (by method, weight, lambda)."""

    def score(model: Path, adapter, tasks, split, limit, out):
        manifest_path = model / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if "method" in manifest:
            key = (manifest["method"], manifest["inputs"][0]["weight"], manifest["parameters"].get("lambda"))
        else:
            key = ("base",) if model.resolve() == ModelStore().get("tiny").path.resolve() else (manifest["name"],)
        calls.append(key[0])
        return {t: table[key][t] for t in tasks}

    return score


REFERENCE = {("base",): {"generation": 20.0, "summarization": 10.0}, ("exp-gen",): {"generation": 40.0},
             ("exp-sum",): {"summarization": 20.0}}


def test_the_sweep_rejects_candidates_below_the_base_and_writes_retention(merge_home, tmp_path):
    table = REFERENCE | {
        ("task_arithmetic", 0.5, None): {"generation": 25.0, "summarization": 12.0},  # retention 0.25, 0.2
        ("task_arithmetic", 1.0, None): {"generation": 35.0, "summarization": 15.0},  # 0.75, 0.5: the best survivor
        ("ties", 1.0, 1.0): {"generation": 30.0, "summarization": 10.0},  # 0.5, 0.0: at the base is allowed
        ("ties", 1.0, 2.0): {"generation": 60.0, "summarization": 9.0},  # 2.0, -0.1: best objective, below base
    }
    calls: list[str] = []
    summary = run_sweep(_grid_config("gridded"), tmp_path / "sweep", ModelStore(), score=_scripted(table, calls))
    assert summary["chosen"] == "gridded--task-arithmetic-w1-normalizefalse"
    assert summary["no_candidate_at_or_above_base"] is False
    assert summary["base_val"] == REFERENCE[("base",)]
    assert summary["expert_val"] == {"generation": 40.0, "summarization": 20.0}
    assert summary["chosen_retention"] == pytest.approx({"generation": 0.75, "summarization": 0.5})
    assert summary["chosen_of_expert"] == pytest.approx({"generation": 35 / 40, "summarization": 15 / 20})
    assert summary["rejected"] == [{"name": "gridded--ties-w1-d0.5-lambda2-normalizefalse",
                                    "below_base": [{"task": "summarization", "score": 9.0, "base": 10.0}]}]
    assert len(summary["results"]) == 4 and summary["candidates"] == 4
    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "sweep" / "sweep.csv").open())}
    lam2 = rows["gridded--ties-w1-d0.5-lambda2-normalizefalse"]
    assert lam2["rejected"] == "True" and lam2["below_base"] == "summarization 9.00 < base 10.00"
    assert float(lam2["retention_generation"]) == pytest.approx(2.0) and lam2["method"] == "ties"
    assert rows["gridded--ties-w1-d0.5-lambda1-normalizefalse"]["rejected"] == "False"
    assert float(rows["gridded--task-arithmetic-w0.5-normalizefalse"]["retention_summarization"]) == pytest.approx(0.2)
    manifest = json.loads((ModelStore().get("gridded").path / "manifest.json").read_text())
    assert manifest["chosen_by_sweep"]["no_candidate_at_or_above_base"] is False
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000


def test_when_every_candidate_is_below_the_base_the_sweep_says_so(merge_home, tmp_path):
    table = REFERENCE | {
        ("task_arithmetic", 0.5, None): {"generation": 19.0, "summarization": 12.0},
        ("task_arithmetic", 1.0, None): {"generation": 35.0, "summarization": 9.5},  # the best objective
        ("ties", 1.0, 1.0): {"generation": 30.0, "summarization": 5.0},
        ("ties", 1.0, 2.0): {"generation": 10.0, "summarization": 15.0},
    }
    summary = run_sweep(_grid_config("all-below"), tmp_path / "sweep", ModelStore(), score=_scripted(table, []))
    assert summary["no_candidate_at_or_above_base"] is True
    assert summary["chosen"] == "all-below--task-arithmetic-w1-normalizefalse"
    assert summary["chosen_below_base"] == [{"task": "summarization", "score": 9.5, "base": 10.0}]
    assert len(summary["rejected"]) == 4
    assert all(set(r["val"]) == {"generation", "summarization"} and set(r["retention"]) == set(r["val"])
               for r in summary["results"])  # every candidate's per-task numbers, for the report
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["no_candidate_at_or_above_base"] is True and len(saved["results"]) == 4
    assert ModelStore().has("all-below")


def test_base_and_expert_scores_are_computed_once_and_cached_in_the_output(merge_home, tmp_path):
    table = REFERENCE | {key: {"generation": 30.0, "summarization": 15.0 + i} for i, key in enumerate(
        [("task_arithmetic", 0.5, None), ("task_arithmetic", 1.0, None), ("ties", 1.0, 1.0), ("ties", 1.0, 2.0)])}
    calls: list[str] = []
    run_sweep(_grid_config("cached"), tmp_path / "sweep", ModelStore(), score=_scripted(table, calls))
    assert calls.count("base") == 1 and calls.count("exp-gen") == 1 and len(calls) == 3 + 4  # a candidate a call
    assert (tmp_path / "sweep" / "val-scores.json").is_file()
    ModelStore().remove("cached")  # as after an interrupted run: the next sweep redoes the choice...
    (tmp_path / "sweep" / "sweep.json").unlink()
    summary = run_sweep(_grid_config("cached"), tmp_path / "sweep", ModelStore(), score=_scripted(table, calls))
    assert len(calls) == 7  # ...from the cached scores, scoring nothing again
    assert summary["chosen"] == "cached--ties-w1-d0.5-lambda2-normalizefalse"


def test_a_rejected_candidate_is_scored_on_every_task_in_the_same_call(merge_home, tmp_path):
    """Every candidate's per-task numbers are in the results (an honest table), each from one scoring call: the
    engine interleaves the tasks' prompts, and a second round of merges for the rejected ones is gone."""
    table = REFERENCE | {
        ("task_arithmetic", 0.5, None): {"generation": 25.0, "summarization": 12.0},
        ("task_arithmetic", 1.0, None): {"generation": 35.0, "summarization": 15.0},
        ("ties", 1.0, 1.0): {"generation": 30.0, "summarization": 8.0},  # below the base on summarization
        ("ties", 1.0, 2.0): {"generation": 60.0, "summarization": 9.0},
    }
    calls: list[str] = []
    summary = run_sweep(_grid_config("every"), tmp_path / "sweep", ModelStore(), score=_scripted(table, calls))
    assert calls.count("ties") == 2 and calls.count("task_arithmetic") == 2
    ties = [r for r in summary["results"] if r["method"] == "ties"]
    assert all(r["rejected"] and set(r["val"]) == {"generation", "summarization"} for r in ties)
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert {r["val_generation"] for r in rows if r["method"] == "ties"} == {"30.0", "60.0"}
    assert summary["chosen"] == "every--task-arithmetic-w1-normalizefalse"


def test_a_candidate_left_by_an_interrupted_sweep_of_another_recipe_is_merged_again(merge_home, tmp_path):
    config = MergeConfig(name="resumed", base_model="tiny", method="linear",
                         models=[{"model": "exp-a", "weight": 0.5}, {"model": "exp-b", "weight": 0.5}],
                         sweep={"weights": [0.3, 0.7], "tasks": ["completion"], "limit": 2, "objective": "mean_score"})

    def interrupted(model: Path, adapter, tasks, split, limit, out):
        if "--" in model.name:
            raise KeyboardInterrupt  # stopped while scoring the first candidate, which is merged and kept
        return dict.fromkeys(tasks, 1.0)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path / "first", ModelStore(), score=interrupted)
    (left,) = [e.name for e in ModelStore().list() if e.name.startswith("resumed--")]
    said: list[str] = []
    summary = run_sweep(config.model_copy(update={"seed": 1}), tmp_path / "second", ModelStore(),
                        score=lambda model, adapter, tasks, *_: dict.fromkeys(tasks, 2.0), step=said.append)
    assert any(s.startswith(f"removing {left}, merged from another recipe (seed: 0 -> 1") for s in said)
    assert summary["candidates"] == 2 and ModelStore().get("resumed")


def _counting(score, seen: list[int]):
    """``score``, recording how many merged candidates the store holds at each call."""

    def counted(model: Path, *args):
        seen.append(sum(1 for e in ModelStore().list() if "--" in e.name))
        return score(model, *args)

    return counted


@pytest.mark.parametrize("every_one_below", [False, True])
def test_the_store_holds_the_best_candidate_so_far_and_the_one_being_scored(merge_home, tmp_path, every_one_below):
    """Each candidate is a full model: a sweep that kept all of them filled a disk (7 x 2.4 GB for Qwen 0.5B)."""
    below = 5.0 if every_one_below else 10.0
    table = REFERENCE | {
        ("task_arithmetic", 0.5, None): {"generation": 25.0, "summarization": 12.0},
        ("task_arithmetic", 1.0, None): {"generation": 35.0, "summarization": 15.0},  # the best
        ("ties", 1.0, 1.0): {"generation": 30.0, "summarization": below},
        ("ties", 1.0, 2.0): {"generation": 60.0, "summarization": 9.0},
    }
    if every_one_below:
        table |= {("task_arithmetic", 0.5, None): {"generation": 19.0, "summarization": 12.0},
                  ("task_arithmetic", 1.0, None): {"generation": 35.0, "summarization": 9.5}}
    seen: list[int] = []
    name = f"pruned-{'below' if every_one_below else 'above'}"  # (the store outlives one parameter's run)
    summary = run_sweep(_grid_config(name), tmp_path / "sweep", ModelStore(),
                        score=_counting(_scripted(table, []), seen))
    best = "ties-w1-d0.5-lambda2-normalizefalse" if every_one_below else "task-arithmetic-w1-normalizefalse"
    assert summary["chosen"] == f"{name}--{best}"  # (all below: the best objective of the rejected)
    assert summary["no_candidate_at_or_above_base"] is every_one_below
    assert max(seen) <= 2  # the best so far beside the one being scored, never more
    assert every_one_below or seen.count(2) >= 1  # (a survivor stays while the next is scored)
    assert [e.name for e in ModelStore().list() if e.name.startswith(name)] == [name]
