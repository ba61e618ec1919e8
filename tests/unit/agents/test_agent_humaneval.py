"""The agent on HumanEval problems asks and assembles as `runtime eval` does: with max_revisions=0 it solves
exactly the problems eval's pass@1 passes on the same answers; with revisions, what the loop adds is counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage

from agents.coding_agent import build_graph, make_checkpointer
from runtime.bench.agent import solve, summarize
from runtime.bench.config import AgentConfig
from runtime.config import TasksConfig, configs_dir, load_config
from runtime.engines.base import EngineResult
from runtime.evaluate import evaluate
from runtime.tasks import build_dataset, load_items
from runtime.tasks.prompts import messages_for
from runtime.tasks.sandbox import Sandbox
from runtime.tasks.scoring import humaneval_results


def _answer(i: int, item) -> str:
    """A deterministic model: right, right inside a fenced whole function, wrong, or cut off mid-body."""
    return [item.reference, f"```python\n{item.input}{item.reference}```", "    return None",
            "\n".join(item.reference.splitlines()[:1]) + "\n    return ("][i % 4]


class EvalModel:
    """One model for both paths: answers eval's HumanEval request for a problem, and only that request."""

    def __init__(self, tasks: TasksConfig, items: list) -> None:
        self.by_prompt = {json.dumps(messages_for(tasks, "humaneval", it)): _answer(i, it)
                          for i, it in enumerate(items)}
        self.asked: list[str] = []

    def reply(self, messages: list[dict]) -> str:
        key = json.dumps(messages)
        assert key in self.by_prompt, f"not eval's HumanEval request: {messages[-1]['content'][:200]!r}"
        self.asked.append(key)
        return self.by_prompt[key]


class FakeRunner:
    """`runtime eval`'s runner interface over EvalModel (render keeps the messages; generate answers them)."""

    model_path, adapter_path, dtype, device, max_batch_size, is_chat = Path("fake"), None, "float32", "cpu", 8, True

    def __init__(self, model: EvalModel) -> None:
        self.model = model

    def render(self, messages):
        return json.dumps(messages)

    def generate(self, prompts, params, on_answer=None):
        return [EngineResult(self.model.reply(json.loads(p)), 1, 1, "stop") for p in prompts]


class Chat:
    """A ChatOpenAI stand-in for the agent, answering through the same EvalModel."""

    def __init__(self, task: str, model: EvalModel, scripted: dict[str, list[str]]) -> None:
        self.task, self.model, self.scripted = task, model, scripted

    def invoke(self, messages):
        as_dicts = [{"role": role, "content": content} for role, content in messages]
        text = (self.scripted[self.task].pop(0) if self.scripted.get(self.task) else self.model.reply(as_dicts))
        return AIMessage(content=text, usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
                         response_metadata={"finish_reason": "stop", "headers": {}})


@pytest.fixture()
def problems(store_home):
    build_dataset()
    return load_items("humaneval", "test", 8)


def test_with_no_revisions_the_agent_solves_what_eval_pass_at_1_passes(problems, tmp_path):
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    sandbox = Sandbox(allow_unsafe=True)  # the programs are HumanEval's own solutions and trivial bodies
    model = EvalModel(tasks, problems)
    report = evaluate(FakeRunner(model), ["humaneval"], "test", 8, tmp_path, tasks=tasks, sandbox=sandbox)
    answers = [json.loads(line)["answer"] for line in (tmp_path / "predictions" / "humaneval.jsonl").read_text()
               .splitlines()]
    eval_passed = [r.passed for r in humaneval_results(problems, answers, sandbox)]
    graph = build_graph(lambda task: Chat(task, model, {}), sandbox=sandbox, checkpointer=make_checkpointer(),
                        tasks=tasks)
    records = [solve(graph, it, 0, f"p{i}") for i, it in enumerate(problems)]
    cfg = AgentConfig(n=8, max_revisions=0)
    summary = summarize(records, cfg)
    assert [r["solved"] for r in records] == eval_passed  # problem by problem, not only in total
    assert summary["solved"] == report["tasks"]["humaneval"]["metrics"]["passed"] == summary["first_try"]
    assert 0 < summary["solved"] < 8 and summary["loop_adds"] == 0 and summary["mean_calls"] == 1
    assert len(model.asked) == 16  # eval asked each problem once, the agent once more: the same request


def test_a_revision_that_fixes_the_body_is_what_the_loop_adds(problems):
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    item = problems[0]
    sent: list[list[tuple[str, str]]] = []

    class Recording(Chat):
        def invoke(self, messages):
            sent.append(messages)
            return super().invoke(messages)

    scripted = {"generation": ["    return None", item.reference], "review": ["line: 2\nkind: return\nfix: x"]}
    graph = build_graph(lambda task: Recording(task, EvalModel(tasks, []), scripted),
                        sandbox=Sandbox(allow_unsafe=True), checkpointer=make_checkpointer(), tasks=tasks)
    record = solve(graph, item, 1, "fix")
    assert record["solved"] and not record["first_try"] and record["calls"] == 3  # generate, review, revise
    revise = sent[-1][-1][1]
    assert revise.startswith(messages_for(tasks, "humaneval", item)[-1]["content"])  # eval's request, then feedback
    assert "Review:\nline: 2" in revise and "Reply with the corrected body only" in revise
    summary = summarize([record], AgentConfig(n=1, max_revisions=1))
    assert summary["loop_adds"] == 100.0 and summary["first_try"] == 0 and summary["solved"] == 1


def test_a_revised_body_keeps_the_imports_of_the_answer_it_revises():
    from agents.coding_agent import _function

    prompt = "def lcm(a, b):\n    \"\"\"Least common multiple.\"\"\"\n"
    first = _function({"prompt": prompt, "entry_point": "lcm"},
                      EngineResult(f"```python\nfrom math import gcd\n\n{prompt}    return a * b\n```", 0, 0, "stop"))
    state = {"prompt": prompt, "entry_point": "lcm", "code": first["code"]}
    revised = _function(state, EngineResult("    return a * b // gcd(a, b)", 0, 0, "stop"), revising=True)
    namespace: dict = {}
    exec(revised["code"], namespace)  # noqa: S102 - the test's own code
    assert namespace["lcm"](4, 6) == 12  # gcd is still imported, though the revision is a bare body
