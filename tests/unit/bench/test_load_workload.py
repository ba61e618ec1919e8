"""The load phase's prompts: none asked twice on one server, none the accuracy phase asked."""

from __future__ import annotations

import pytest

from runtime.bench import load
from runtime.bench.config import LOAD_ITEMS_FROM, AccuracyConfig, LoadConfig
from runtime.config import TASKS, TasksConfig, configs_dir, load_config
from runtime.tasks import build_dataset, load_items
from runtime.tasks.prompts import messages_for


def test_every_load_request_asks_a_prompt_no_earlier_request_or_accuracy_item_asked(store_home, monkeypatch):
    build_dataset()
    asked: list[list[str]] = []

    async def run_load(url, specs, concurrency=None, rate=None):
        asked.append([spec.messages[-1]["content"] for spec in specs])
        return {}

    class Quiet:
        def phase(self, *_):
            pass

        def advance(self, *_):
            pass

    monkeypatch.setattr(load, "run_load", run_load)
    cfg = LoadConfig(concurrency=[1, 4, 8], requests={1: 6, 4: 12, 8: 16}, rate=1.0, rate_requests=12, warmup=2)
    load.run_levels("http://unused", cfg, Quiet(), "x")
    assert [len(a) for a in asked] == [2, 6, 12, 16, 12]  # warm-up, the three levels, the Poisson rate
    prompts = [p for level in asked for p in level]
    assert len(set(prompts)) == len(prompts)  # a prefix cache would answer a repeated prompt for free
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    accuracy = {messages_for(tasks, task, it)[-1]["content"] for task in TASKS
                for it in load_items(task, "test", LOAD_ITEMS_FROM)}
    assert not accuracy & set(prompts)


def test_accuracy_n_stays_below_the_loads_items():
    with pytest.raises(ValueError):
        AccuracyConfig(n=LOAD_ITEMS_FROM + 1)
    with pytest.raises(ValueError):
        AccuracyConfig(n_for={"review": LOAD_ITEMS_FROM + 1})
