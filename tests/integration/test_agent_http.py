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


def test_the_bench_agent_solves_a_humaneval_problem_over_http_on_each_route(server: str):
    """runtime/bench/agent.py against the server: eval's request on the generation route, the review route for
    the loop, and a summary that counts calls and what the loop added."""
    from runtime.bench.agent import run_on_server
    from runtime.bench.config import AgentConfig
    from runtime.config import TasksConfig, configs_dir, load_config
    from runtime.tasks import TaskItem
    from runtime.tasks.sandbox import Sandbox

    prompt = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n'
    item = TaskItem("humaneval/toy", "humaneval", "test", "humaneval", prompt, "    return sum(xs)\n",
                    {"entry_point": "total", "test": "def check(f):\n    assert f([1, 2]) == 3\n"})
    cfg = AgentConfig(n=1, max_revisions=1, workers=1, max_tokens=256)
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    summary = run_on_server(f"{server}/v1", [item], cfg, tasks, Sandbox(allow_unsafe=True), api_key="test-key")
    assert summary["problems"] == 1 and summary["errors"] == 0
    (record,) = summary["records"]
    assert record["solved"] == (record["first_try"] or summary["loop_adds"] == 100.0)
    routes = summary["calls_per_route"]
    assert routes["generation->tiny-experts/tiny-gen"] == (1 if record["first_try"] else 2)
    assert record["first_try"] or routes["review->tiny-experts/tiny-rev"] == 1  # a failed first try is reviewed
