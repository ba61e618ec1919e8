"""Deployment configs -> serving plan: engines per distinct model, adapters on their base, routes, fallbacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from loras import make_lora

from runtime.config import DeploymentConfig, EngineConfig
from runtime.deploy import build_plan, load_deployment, single_model_deployment
from runtime.errors import ConfigError, ModelNotFoundError
from runtime.hardware import served_on
from runtime.models import ModelStore
from runtime.router import route


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("home")
    root = tmp_path_factory.mktemp("loras")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIXMERGE_HOME", str(home))
        s = ModelStore()
        s.register("tiny", tiny_model_dir)
        s.register("gen", make_lora(tiny_model_dir, root / "gen", 1, parent="tiny"), "expert", parent="tiny")
        s.register("mix", make_lora(tiny_model_dir, root / "mix", 2, parent="tiny"), "mixed", parent="tiny")
        s.register("merged-full", shutil.copytree(tiny_model_dir, root / "merged"), "merged")
        yield s


DEPLOYMENTS = {
    "experts": DeploymentConfig(name="experts", option="experts", base_model="tiny",
                                adapters={"generation": "gen", "review": "missing-expert"}, fallback=["mixed"]),
    "mixed": DeploymentConfig(name="mixed", option="mixed", base_model="tiny", model="mix"),
    "merged": DeploymentConfig(name="merged", option="merged", base_model="tiny", model="merged-full"),
    "hybrid": DeploymentConfig(name="hybrid", option="hybrid", base_model="tiny",
                               routes={"generation": "experts", "summarization": "mixed", "review": "gone"}),
}


def _load(name: str) -> DeploymentConfig:
    if name not in DEPLOYMENTS:
        raise ConfigError(name, ["no such deployment"])
    return DEPLOYMENTS[name]


def test_experts_share_one_engine_and_a_missing_expert_falls_back(store):
    plan = build_plan(DEPLOYMENTS["experts"], store, load=_load)
    tiny = str(store.get("tiny").path)
    assert set(plan.engines) == {tiny} and set(plan.engines[tiny].adapters) == {"gen", "mix"}
    assert route(plan.table, "generation").adapter == "gen"
    assert route(plan.table, "review").adapter is None  # its expert is missing: the base model answers
    assert plan.table.fallbacks["experts"] == ["mixed", "experts:base"]


def test_a_full_merged_model_gets_its_own_engine_and_no_second_model(store):
    plan = build_plan(DEPLOYMENTS["merged"], store, load=_load)
    assert route(plan.table, "review").engine == str(store.get("merged-full").path)
    assert set(plan.engines) == {str(store.get("merged-full").path)}  # no base model held just in case
    assert plan.table.fallbacks["merged"] == []


def test_a_merged_model_that_names_base_as_fallback_gets_it(store):
    d = DEPLOYMENTS["merged"].model_copy(update={"fallback": ["base"]})
    base = DeploymentConfig(name="base", option="base", base_model="tiny")
    plan = build_plan(d, store, load=lambda n: base if n == "base" else _load(n))
    assert len(plan.engines) == 2 and plan.table.fallbacks["merged"][0] == "base"


def test_hybrid_takes_each_tasks_route_and_the_base_for_missing_ones(store):
    plan = build_plan(DEPLOYMENTS["hybrid"], store, load=_load)
    assert route(plan.table, "generation").adapter == "gen"
    assert route(plan.table, "summarization").adapter == "mix"
    assert route(plan.table, "review").adapter is None and route(plan.table, "completion").adapter is None


def test_single_model_deployment_serves_an_adapter_on_its_parent(store):
    d = single_model_deployment("gen", store)
    assert (d.option, d.base_model, d.adapter) == ("merged-adapter", "tiny", "gen")
    assert single_model_deployment("tiny", store).option == "base"
    with pytest.raises(ModelNotFoundError):
        build_plan(DeploymentConfig(name="x", option="mixed", base_model="tiny", model="nope"), store, load=_load)


def test_folded_experts_are_full_models_with_an_engine_each_and_answer_as_the_lora_path(store):
    import functools

    from merge.run import fold_lora
    from runtime.engines.base import SamplingParams
    from runtime.engines.offline import OfflineRunner

    store.register("sum", make_lora(store.get("tiny").path, store.home / "sum-lora", 3, parent="tiny"), "expert",
                   parent="tiny")
    folded = DeploymentConfig(name="folded", option="folded", base_model="tiny",
                              adapters={"generation": "gen", "summarization": "sum"},
                              engine=EngineConfig(dtype="float32"))  # folds saved in the served dtype
    with pytest.raises(ConfigError, match="need a way to fold"):
        build_plan(folded, store, load=_load)
    plan = build_plan(folded, store, load=_load, fold=functools.partial(fold_lora, store=store))
    gen, summ = route(plan.table, "generation"), route(plan.table, "summarization")
    assert gen.adapter is None and summ.adapter is None and len({gen.engine, summ.engine}) == 2
    assert len(plan.engines) == 3 and not any(spec.adapters for spec in plan.engines.values())  # + base
    prompt = ["def add(a, b):"]
    with OfflineRunner(store.get("tiny").path, adapter_path=store.get("gen").path, dtype="float32") as runner:
        lora = runner.generate(prompt, SamplingParams(max_new_tokens=8))
    with OfflineRunner(gen.engine, dtype="float32") as runner:
        full = runner.generate(prompt, SamplingParams(max_new_tokens=8))
    assert [g.text for g in full] == [g.text for g in lora]  # fp32: folding changes no greedy token


def test_a_folded_mix_is_one_full_model_and_fold_is_refused_where_there_is_no_one_artifact(store):
    import functools

    from merge.run import fold_lora

    mixed = DeploymentConfig(name="mixed-folded", option="mixed", base_model="tiny", model="mix", fold=True,
                             engine=EngineConfig(dtype="bfloat16"))  # saved in bf16 even where the CPU lacks it
    with pytest.raises(ConfigError, match="need a way to fold LoRA"):
        build_plan(mixed, store, load=_load)
    plan = build_plan(mixed, store, load=_load, fold=functools.partial(fold_lora, store=store))
    target = route(plan.table, "review")
    assert target.adapter is None and target.engine != str(store.get("tiny").path)
    assert list(plan.engines) == [target.engine] and not plan.engines[target.engine].adapters  # no base beside it
    assert (Path(target.engine) / "config.json").is_file()
    served = served_on(mixed.engine)[1]  # saved in the dtype the engine computes in
    assert target.engine.endswith(f"-{served}") and json.loads((Path(target.engine) / "config.json").read_text())[
        "dtype"] == served
    again = build_plan(mixed, store, load=_load, fold=functools.partial(fold_lora, store=store))
    assert route(again.table, "review").engine == target.engine  # folded once, then the cached fold
    adapter = DeploymentConfig(name="ma", option="merged-adapter", base_model="tiny", adapter="gen", fold=True,
                               engine=EngineConfig(dtype="bfloat16"))
    one = route(build_plan(adapter, store, load=_load, fold=functools.partial(fold_lora, store=store)).table, "review")
    assert one.adapter is None and Path(one.engine).name.startswith("gen-") and one.engine.endswith("-bfloat16")
    with pytest.raises(ValueError, match="option 'folded' serves each expert folded"):
        DeploymentConfig(name="x", option="experts", base_model="tiny", adapters={"generation": "gen"}, fold=True)
    with pytest.raises(ValueError, match="option 'base' has none"):
        DeploymentConfig(name="x", option="base", base_model="tiny", fold=True)


def test_a_route_to_a_relative_yaml_names_the_file_beside_the_deployment(store, tmp_path, monkeypatch):
    """A bench's hybrid.yaml routes to its own base.yaml by name: the folder serves from anywhere."""
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "base.yaml").write_text("name: base\noption: base\nbase_model: tiny\n")
    (folder / "hybrid.yaml").write_text("name: hybrid\noption: hybrid\nbase_model: tiny\nfallback: [base.yaml]\n"
                                        "routes: {generation: base.yaml, summarization: mixed}\n")
    monkeypatch.chdir(tmp_path)  # not the deployment's folder
    hybrid = load_deployment(str(folder / "hybrid.yaml"))
    assert hybrid.routes["generation"] == str(folder / "base.yaml") and hybrid.fallback == [str(folder / "base.yaml")]
    assert hybrid.routes["summarization"] == "mixed"  # a name stays a name
    plan = build_plan(hybrid, store, load=lambda n: load_deployment(n) if n.endswith(".yaml") else _load(n))
    assert route(plan.table, "generation").adapter is None and route(plan.table, "summarization").adapter == "mix"
