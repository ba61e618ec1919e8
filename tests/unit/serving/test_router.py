import json
from pathlib import Path

import pytest
from serving_fakes import experts_table

from runtime.classifier import classify, instruction
from runtime.config import TasksConfig, configs_dir, load_config
from runtime.errors import ModelNotFoundError
from runtime.router import fallback_routes, route


def test_a_task_goes_to_the_primary_deployments_expert():
    r = route(experts_table(), "generation")
    assert (r.deployment, r.task, r.engine, r.adapter) == ("experts", "generation", "/models/base", "gen-lora")
    r = route(experts_table(), "summarization")  # no summarization expert: the base model
    assert (r.adapter, r.engine) == (None, "/models/base")


def test_deployment_task_pairs_adapters_and_auto():
    table = experts_table()
    assert route(table, "merged/review").engine == "/models/merged"
    assert route(table, "rev-lora").adapter == "rev-lora"
    r = route(table, "auto", "Is there a bug in this code?\n\ndef f(x):\n    return x + 1")
    assert (r.task, r.adapter) == ("review", "rev-lora") and "classifier chose review" in r.reason
    r = route(table, "experts", "Write a function that reverses a string.")
    assert r.task == "generation" and r.adapter == "gen-lora"


def test_unknown_model_lists_what_exists():
    with pytest.raises(ModelNotFoundError, match="unknown model 'reveiw'.*review") as info:
        route(experts_table(), "reveiw")
    assert info.value.status_code == 404 and info.value.param == "model"


def test_fallback_chain_expert_then_merged_then_base():
    table = experts_table()
    first = route(table, "generation")
    chain = fallback_routes(table, first)
    assert [(r.deployment, r.engine, r.adapter) for r in chain] == [
        ("merged", "/models/merged", None), ("experts:base", "/models/base", None)]


def test_the_classifier_reads_the_instruction_not_the_code():
    code = "def review_summary(items):\n    return items"
    assert instruction("Write the next line:\n\n" + code) == "Write the next line:\n\n"
    assert classify("Complete the next line:\n\n" + code) == "completion"
    assert classify(code) == "completion"  # bare code: continue it
    assert classify("hello there") == "generation"


def test_every_task_prompt_of_tasks_yaml_routes_to_its_task():
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    for name, cfg in tasks.tasks.items():
        assert classify(cfg.prompt.format(input="def f(x):\n    return x")) == name


def test_heldout_routing_accuracy_is_at_least_95_percent():
    heldout = Path(__file__).parents[3] / "benchmarks" / "routing" / "heldout.jsonl"
    items = [json.loads(line) for line in heldout.read_text().splitlines()]
    assert len(items) == 100
    correct = sum(classify(it["text"]) == it["task"] for it in items)
    assert correct >= 95
