"""The hybrid plan (runtime/bench/recommend.py): costs, the budget, a per-task plan that must beat one option
beyond the noise, ties settled by cost (between single options and inside a plan), and the seed twins' spread."""

from __future__ import annotations

import pytest

from runtime.bench.config import BenchConfig, BudgetConfig
from runtime.bench.recommend import plan_cost, recommend
from runtime.config import configs_dir, load_config
from runtime.errors import ConfigError
from runtime.tasks import build_dataset, load_items


def _result(option: str, rss: float, p90: float) -> dict:
    return {"deployment": option, "engine": "hf", "peak_rss_mb": rss, "latency": {"8": {"p90_e2el_ms": p90}}}


def test_plan_cost_shares_the_base_engine_and_adds_extra_model_weights():
    sizes = {"experts": {"/base": 500.0}, "mixed": {"/base": 500.0}, "merged": {"/merged": 500.0}}
    costs = {"experts": {"peak_rss_mb": 1400, "p90_e2el_ms": 900}, "mixed": {"peak_rss_mb": 1200, "p90_e2el_ms": 700},
             "merged": {"peak_rss_mb": 1100, "p90_e2el_ms": 500}}
    one = plan_cost({"generation": "experts", "review": "mixed"}, costs, sizes)
    assert one == {"memory_mb": 1400, "p90_e2el_ms": 900, "engines": 1}
    two = plan_cost({"generation": "experts", "review": "merged"}, costs, sizes)
    assert two == {"memory_mb": 1900, "p90_e2el_ms": 900, "engines": 2}


def test_recommendation_maximises_accuracy_within_the_budget(store_home):
    build_dataset()
    items = {t: load_items(t, "test", 12) for t in ("completion", "summarization")}
    answers = {"a": {t: [it.reference for it in items[t]] for t in items},  # perfect
               "b": {t: ["x"] * 12 for t in items}}
    acc = {"a": {t: {"value": 100.0, "headline": "h"} for t in items}, "b": {t: {"value": 5.0, "headline": "h"}
                                                                             for t in items}}
    sizes = {"a": {"/merged": 500.0}, "b": {"/base": 500.0}}
    results = [_result("a", 3000, 1000), _result("b", 1000, 1000)]
    roomy = recommend(acc, results, BudgetConfig(memory_mb=4000, p90_e2el_ms=2000), items, answers, sizes, 200)
    assert roomy.routes == {"completion": "a", "summarization": "a"} and roomy.fits_budget
    assert roomy.evidence["completion"].versus["b"].significant
    tight = recommend(acc, results, BudgetConfig(memory_mb=2000, p90_e2el_ms=2000), items, answers, sizes, 200)
    assert tight.routes == {"completion": "b", "summarization": "b"} and tight.fits_budget
    assert "over the budget" in tight.why[0] and "does not fit the budget" in tight.why[1]
    none = recommend(acc, results, BudgetConfig(memory_mb=10, p90_e2el_ms=2000), items, answers, sizes, 200)
    assert not none.fits_budget and "No plan fits" in none.why[0]


def test_a_task_where_every_option_is_below_base_counts_against_the_plans_that_route_it_there(store_home):
    build_dataset()
    items = {t: load_items(t, "test", 12) for t in ("completion", "summarization")}
    refs = {t: [it.reference for it in items[t]] for t in items}
    answers = {"base": {"completion": ["x"] * 12, "summarization": refs["summarization"]},
               "tuned": {"completion": refs["completion"], "summarization": ["x"] * 12}}
    acc = {"base": {"completion": {"value": 5.0, "headline": "h"}, "summarization": {"value": 100.0, "headline": "h"}},
           "tuned": {"completion": {"value": 100.0, "headline": "h"}, "summarization": {"value": 5.0, "headline": "h"}}}
    sizes = {o: {"/base": 500.0} for o in acc}
    rec = recommend(acc, [_result("base", 1000, 900), _result("tuned", 1000, 900)],
                    BudgetConfig(memory_mb=4000, p90_e2el_ms=2000), items, answers, sizes, 200)
    # summarization, where nothing beats base, ranks too: routing it to tuned (below base) would cost the plan
    assert rec.ranking_tasks == ["completion", "summarization"]
    assert rec.routes == {"completion": "tuned", "summarization": "base"} and rec.normalized_gain == 0.5
    assert rec.option_gains["tuned"].diff == pytest.approx(0.0, abs=0.2)  # ~+1 on completion, ~-1 on summarization


def test_a_per_task_plan_that_wins_only_within_the_noise_gives_way_to_one_option(store_home):
    build_dataset()
    items = {t: load_items(t, "test", 12) for t in ("completion", "summarization")}
    refs = {t: [it.reference for it in items[t]] for t in items}
    # b equals a except one completion answer: a better point estimate there, far inside the noise
    b = {t: list(v) for t, v in refs.items()} | {"summarization": ["x"] * 12}
    a = {t: list(v) for t, v in refs.items()}
    a["completion"][0] = "something else entirely"
    acc = {"a": {"completion": {"value": 90.0, "headline": "h"}, "summarization": {"value": 100.0, "headline": "h"}},
           "b": {"completion": {"value": 100.0, "headline": "h"}, "summarization": {"value": 5.0, "headline": "h"}}}
    sizes = {"a": {"/base": 500.0}, "b": {"/base": 500.0}}
    rec = recommend(acc, [_result("a", 1000, 1000), _result("b", 1000, 1000)],
                    BudgetConfig(memory_mb=4000, p90_e2el_ms=2000), items, {"a": a, "b": b}, sizes, 200)
    assert rec.routes == {"completion": "a", "summarization": "a"}
    assert rec.simplified_from.instead_of == {"completion": "b", "summarization": "a"}
    assert "Every task goes to a" in rec.why[1]


def test_options_that_tie_within_the_noise_give_way_to_the_cheapest(store_home):
    build_dataset()
    items = {t: load_items(t, "test", 12) for t in ("completion", "summarization")}
    refs = {t: [it.reference for it in items[t]] for t in items}
    close = {t: list(v) for t, v in refs.items()}
    close["completion"][0] = "something else entirely"  # a worse point estimate, far inside the noise
    answers = {"base": {t: ["x"] * 12 for t in items}, "big": refs, "small": close}
    acc = {o: {t: {"value": v, "headline": "h"} for t, v in zip(items, values, strict=True)}
           for o, values in (("base", (5.0, 5.0)), ("big", (100.0, 100.0)), ("small", (92.0, 100.0)))}
    sizes = {o: {"/base": 500.0} for o in acc}
    results = [_result("base", 1000, 900), _result("big", 3000, 1000), _result("small", 1500, 1000)]
    rec = recommend(acc, results, BudgetConfig(memory_mb=4000, p90_e2el_ms=2000), items, answers, sizes, 200)
    assert rec.routes == {"completion": "small", "summarization": "small"}
    assert rec.tie.model_dump() == {"options": ["big", "small"], "chosen": "small", "best_estimate": "big"}
    assert rec.normalized_gain < 1 and rec.ranking_tasks == ["completion", "summarization"]
    assert any(w.startswith("Tie: big, small") for w in rec.why)


def test_a_route_that_ties_within_the_noise_goes_to_the_cheaper_option(store_home):
    build_dataset()
    items = {t: load_items(t, "test", 12) for t in ("completion", "summarization")}
    refs = {t: [it.reference for it in items[t]] for t in items}
    close = {t: list(v) for t, v in refs.items()} | {"summarization": ["x"] * 12}
    close["completion"][0] = "something else entirely"  # completion: a worse point estimate, inside the noise
    answers = {"base": {t: ["x"] * 12 for t in items}, "big": refs, "small": close,
               "summ": {"completion": ["x"] * 12, "summarization": refs["summarization"]}}
    acc = {o: {t: {"value": v, "headline": "h"} for t, v in zip(items, values, strict=True)}
           for o, values in (("base", (5.0, 5.0)), ("big", (100.0, 5.0)), ("small", (92.0, 5.0)),
                             ("summ", (5.0, 100.0)))}
    sizes = {o: {"/base": 500.0} for o in acc}
    results = [_result("base", 1000, 900), _result("big", 3000, 1000), _result("small", 1500, 1000),
               _result("summ", 1200, 1000)]
    rec = recommend(acc, results, BudgetConfig(memory_mb=4000, p90_e2el_ms=2000), items, answers, sizes, 200)
    assert rec.routes == {"completion": "small", "summarization": "summ"}
    assert rec.unconstrained_best.routes == {"completion": "big", "summarization": "summ"}
    assert rec.route_ties["completion"].model_dump() == {"options": ["big", "small"], "chosen": "small",
                                                         "best_estimate": "big"}
    assert list(rec.route_ties) == ["completion"] and rec.estimated_memory_mb == 1500
    assert "Tie on completion: big, small" in rec.why[1] and "1500 MB" in rec.why[1] and "3000 MB" in rec.why[1]
    assert rec.evidence["completion"].option == "small"
    assert not any("does not fit the budget" in w for w in rec.why)  # the re-routed task shows no "better" option
    # beyond the noise it is no tie: the best estimate keeps its route
    far = answers | {"small": {"completion": ["x"] * 12, "summarization": ["x"] * 12}}
    acc["small"]["completion"]["value"] = 5.0
    rec = recommend(acc, results, BudgetConfig(memory_mb=4000, p90_e2el_ms=2000), items, far, sizes, 200)
    assert rec.routes == {"completion": "big", "summarization": "summ"} and rec.route_ties is None


def test_a_seed_twin_is_compared_with_the_option_it_retrains_on_the_same_items(store_home):
    from runtime.bench.compare import seed_spread

    build_dataset()
    items = {"completion": load_items("completion", "test", 12)}
    refs = [it.reference for it in items["completion"]]
    answers = {"mixed": {"completion": refs}, "mixed-s1": {"completion": ["x"] * 12},
               "experts": {"completion": refs}}
    out = seed_spread(items, answers, {"mixed-s1": "mixed", "experts-s1": "experts"}, 200)
    assert list(out) == ["mixed-s1"]  # a twin that was not scored is left out
    d = out["mixed-s1"]
    assert d["of"] == "mixed" and d["per_task"]["completion"]["diff"] < -50
    assert d["per_task"]["completion"]["ci95"][1] < 0 and d["per_task"]["completion"]["seed_alone"]
    same = seed_spread(items, answers, {"experts": "mixed"}, 200)["experts"]["per_task"]["completion"]
    assert same["diff"] == 0 and not same["seed_alone"]
    with pytest.raises(ConfigError, match="seed_twins: mixed-s1: mixed must name two different deployment options"):
        load_config(configs_dir() / "bench" / "smollm2.yaml", BenchConfig, ["seed_twins={mixed-s1: mixed}"])
    pairs = load_config(configs_dir() / "bench" / "qwen-seeds.yaml", BenchConfig, ["deployments=[qwen-experts]"])
    assert pairs.seed_twins["qwen-mixed-s1"] == "qwen-mixed"  # a pair not run is left out of the table, not refused
