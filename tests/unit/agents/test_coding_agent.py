"""The coding agent with scripted fake chat models: node order, revision bound, early stop, error handling."""

from __future__ import annotations

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage

import agents.llm as llm_module
from agents.coding_agent import build_graph, make_checkpointer, run_agent
from agents.llm import call

GOOD = "def add(a, b):\n    return a + b"
BAD = "def add(a, b):\n    return a - b"
TESTS = "def check(f):\n    assert f(2, 3) == 5\n"


class Scripted:
    """A chat model that answers from a per-task script and records what it was asked."""

    def __init__(self, task: str, script: dict[str, list], log: list[str]) -> None:
        self.task, self.script, self.log = task, script, log

    def invoke(self, messages):
        self.log.append(self.task)
        answer = self.script[self.task].pop(0) if len(self.script[self.task]) > 1 else self.script[self.task][0]
        if isinstance(answer, Exception):
            raise answer
        answer, finish = answer if isinstance(answer, tuple) else (answer, "stop")
        return AIMessage(content=answer, usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
                         response_metadata={"finish_reason": finish,
                                            "headers": {"x-mixmerge-adapter": f"{self.task}-lora",
                                                        "x-mixmerge-deployment": "experts"}})


def _graph(script: dict[str, list], log: list[str]):
    return build_graph(lambda task: Scripted(task, script, log), checkpointer=make_checkpointer())


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(llm_module.time, "sleep", lambda s: None)


def test_node_order_without_tests_and_a_clean_review():
    log: list[str] = []
    script = {"generation": ["1. add", GOOD], "completion": ["unused"], "review": ["no issues"]}
    state = run_agent(_graph(script, log), "Write add(a, b).", thread_id="t1")
    nodes = [s["node"] for s in state["steps"]]
    assert nodes == ["plan", "generate", "review", "finish"]
    assert state["code"] == GOOD and log == ["generation", "generation", "review"]
    assert state["steps"][0]["route"] == {"adapter": "generation-lora", "deployment": "experts"}


def test_unfinished_code_is_completed_line_by_line():
    log: list[str] = []
    script = {"generation": ["plan", "def add(a, b):"], "completion": ["    return a + b"], "review": ["no issues"]}
    state = run_agent(_graph(script, log), "Write add.", thread_id="t2")
    assert state["code"] == GOOD and [s["node"] for s in state["steps"]].count("complete") == 1


def test_a_line_cut_off_by_max_tokens_is_dropped_before_completing():
    log: list[str] = []
    script = {"generation": ["plan", ("def add(a, b):\n    return a +", "length")],
              "completion": ["    return a + b"], "review": ["no issues"]}
    state = run_agent(_graph(script, log), "Write add.", thread_id="t2b")
    assert state["code"] == GOOD and log.count("completion") == 1


def test_completion_stops_when_the_model_repeats_itself_and_keeps_what_parses():
    log: list[str] = []
    script = {"generation": ["plan", "def add(a, b):\n    x = 1\n    if x"], "completion": ["    if x"],
              "review": ["no issues"]}
    state = run_agent(_graph(script, log), "Write add.", thread_id="t2c")
    assert log.count("completion") == 2  # the second answer repeats the first: no third call
    assert state["code"] == "def add(a, b):\n    x = 1"  # the longest prefix that parses


def test_revisions_are_bounded():
    log: list[str] = []
    script = {"generation": ["plan", BAD], "completion": ["x"], "review": ["line: 2\nkind: arithmetic\nfix: x"]}
    state = run_agent(_graph(script, log), "Write add.", max_revisions=2, thread_id="t3")
    assert state["revisions"] == 2 and log.count("review") == 3
    assert [s["node"] for s in state["steps"]][-1] == "finish"


def test_the_agent_stops_early_when_tests_pass_and_feeds_failures_back():
    log: list[str] = []
    script = {"generation": ["plan", BAD, GOOD], "completion": ["x"], "review": ["line: 2\nkind: arithmetic"]}
    state = run_agent(_graph(script, log), "Write add.", tests=TESTS, entry_point="add", thread_id="t4")
    nodes = [s["node"] for s in state["steps"]]
    assert nodes == ["plan", "generate", "run_tests", "review", "revise", "run_tests", "finish"]
    assert state["passed"] is True and state["code"] == GOOD


def test_transient_errors_are_retried_then_reported_not_swallowed():
    request = httpx.Request("POST", "http://x/v1/chat/completions")
    busy = openai.RateLimitError("busy", response=httpx.Response(429, request=request), body=None)
    log: list[str] = []
    script = {"generation": [busy, "1. plan", GOOD], "completion": ["x"], "review": ["no issues"]}
    state = run_agent(_graph(script, log), "Write add.", thread_id="t5")
    assert state["error"] is None and log.count("generation") == 3  # one retry, then the plan, then the code
    down = openai.InternalServerError("down", response=httpx.Response(503, request=request), body=None)
    script = {"generation": [down], "completion": ["x"], "review": ["x"]}
    state = run_agent(_graph(script, []), "Write add.", thread_id="t6")
    assert state["error"].startswith("plan: gave up after 4 attempts")
    assert [s["node"] for s in state["steps"]][-1] == "finish"


def test_a_non_transient_error_is_not_retried():
    calls = []

    class Broken:
        def invoke(self, messages):
            calls.append(1)
            raise ValueError("bad request shape")

    with pytest.raises(Exception, match="ValueError: bad request shape"):
        call(Broken(), [("user", "x")])
    assert len(calls) == 1


def test_state_is_checkpointed_under_the_thread_id():
    graph = _graph({"generation": ["p", GOOD], "completion": ["x"], "review": ["no issues"]}, [])
    run_agent(graph, "Write add.", thread_id="kept")
    saved = graph.get_state({"configurable": {"thread_id": "kept"}}).values
    assert saved["code"] == GOOD and saved["job"] == "Write add."


def test_sqlite_checkpoints_survive_a_new_graph(tmp_path):
    db = str(tmp_path / "agent.sqlite")
    script = {"generation": ["p", GOOD], "completion": ["x"], "review": ["no issues"]}
    run_agent(build_graph(lambda t: Scripted(t, script, []), checkpointer=make_checkpointer(db)), "Write add.",
              thread_id="disk")
    reopened = build_graph(lambda t: Scripted(t, script, []), checkpointer=make_checkpointer(db))
    assert reopened.get_state({"configurable": {"thread_id": "disk"}}).values["code"] == GOOD


def test_the_agent_does_not_import_the_cli_that_imports_it():
    import ast
    from pathlib import Path

    import agents.coding_agent as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "runtime.cli" not in imported  # `runtime agent` is the one entry point (lazy imports included)


def test_each_task_route_gets_its_own_answer_cap():
    from agents.llm import chat_factory

    make = chat_factory("http://127.0.0.1:1/v1", max_tokens={"generation": 600, "review": 48})
    assert (make("generation").max_tokens, make("review").max_tokens, make("completion").max_tokens) == (600, 48, 256)
    assert make("review").model_name == "review"
    assert chat_factory("http://x/v1", max_tokens=64)("review").max_tokens == 64
