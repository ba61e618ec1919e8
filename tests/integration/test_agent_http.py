"""The coding agent against a real `runtime serve` (tiny model, hf engine, two LoRA experts) over HTTP: every
node reaches the route of its task, as the server's route headers and metrics say."""

from __future__ import annotations

import httpx

from agents.coding_agent import build_graph, make_checkpointer, run_agent
from agents.llm import chat_factory


def test_each_node_reaches_the_route_of_its_task(server: str):
    graph = build_graph(chat_factory(f"{server}/v1", "test-key", max_tokens=12), checkpointer=make_checkpointer())
    state = run_agent(graph, "Write a function add(a, b) that returns the sum.", max_revisions=1,
                      tests="def check(f):\n    assert f(2, 3) == 5\n", entry_point="add", thread_id="http")
    calls = [s for s in state["steps"] if "task" in s]
    assert state["error"] is None and calls
    for step in calls:
        expected = {"generation": "tiny-gen", "review": "tiny-rev", "completion": ""}[step["task"]]
        assert step["route"]["adapter"] == expected, step
        assert step["route"]["task"] == step["task"] and step["route"]["deployment"] == "tiny-experts"
    assert {s["node"] for s in calls} >= {"plan", "generate"}
    metrics = httpx.get(f"{server}/metrics").text
    assert 'mixmerge_routes_total{adapter="tiny-gen",deployment="tiny-experts",task="generation"}' in metrics
