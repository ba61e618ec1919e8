"""A LangGraph coding agent on the runtime: plan -> generate -> complete -> [run_tests] -> review ->
(revise -> complete -> [run_tests] -> review)* -> finish, with a bounded number of revisions.

Given a function to complete (``prompt``: imports, signature and docstring, as in HumanEval) the agent works as
`runtime eval` does: no plan, generate and revise ask the generation route with eval's HumanEval prompt, and
the code is the prompt plus the body the answer gives (``scoring.assemble``); generate -> [run_tests] ->
(review -> revise -> [run_tests])*. With ``max_revisions=0`` it scores what `runtime eval`'s pass@1 scores.

Each node calls the runtime with ``model`` set to its task (generation, completion, review), so the runtime,
not the agent, decides which deployment and adapter answer. ``build_graph(llm_factory, ...)`` takes its model
maker as an argument, so tests pass a scripted fake. State is checkpointed under a ``thread_id``.

    runtime agent "Write a function that ..." --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from agents.llm import CallFailed, call
from runtime.config import TasksConfig, configs_dir, load_config
from runtime.tasks.measures import parses
from runtime.tasks.prompts import task_config
from runtime.tasks.sandbox import Sandbox
from runtime.tasks.scoring import assemble, check_program, helpers, strip_fences

MAX_COMPLETION_LINES = 4  # completion calls to finish code that was cut off; then the longest prefix that parses


class AgentState(TypedDict, total=False):
    job: str
    prompt: str | None  # a function to complete (imports, signature, docstring): eval's prompt and assembly
    tests: str | None  # test code that calls check(entry_point) or asserts; run in the sandbox
    entry_point: str | None
    plan: str
    code: str
    truncated: bool  # the last generate/revise answer was cut off by max_tokens
    review: str
    test_output: str
    passed: bool | None
    revisions: int
    max_revisions: int
    error: str | None
    steps: Annotated[list[dict[str, Any]], operator.add]  # one record per model call or test run


def _step(node: str, task: str, reply) -> dict[str, Any]:
    return {"node": node, "task": task, "route": reply.route, "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens, "seconds": round(reply.seconds, 3)}


def _code_of(text: str) -> str:
    return strip_fences(text).strip("\n")


def _written(reply) -> dict[str, Any]:
    return {"code": _code_of(reply.text), "truncated": reply.finish_reason == "length"}


def body_messages(tasks: TasksConfig, prompt: str, feedback: str = "") -> list[tuple[str, str]]:
    """`runtime eval`'s HumanEval request for ``prompt`` (the generation task's system and prompt), with the
    previous attempt's review and test output appended when revising."""
    cfg = task_config(tasks, "humaneval")
    user = cfg.prompt.format(input=prompt) + (f"\n\n{feedback}\n\nReply with the corrected body only, indented "
                                              "as in the function." if feedback else "")
    return ([("system", cfg.system)] if cfg.system else []) + [("user", user)]


def _function(state: AgentState, reply, revising: bool = False) -> dict[str, Any]:
    """The function as eval assembles it: the prompt and the body the answer gives (with its helpers). A revision
    is asked for the body only: one that brings no helpers keeps those of the code it revises (an answer that
    opened with ``from math import gcd`` still has it)."""
    prompt, entry_point = state["prompt"] or "", state.get("entry_point") or ""
    code = assemble(prompt, reply.text, entry_point)
    if revising and not helpers(reply.text, entry_point, prompt) and (
            kept := helpers(state.get("code", ""), entry_point, prompt)):
        code = f"{code.rstrip()}\n\n\n{kept}\n"
    return {"code": code, "truncated": reply.finish_reason == "length"}


def parseable_prefix(code: str) -> str:
    """The longest run of leading lines that parses ("" if none): what is left of code cut off mid-way."""
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):
        if parses("\n".join(lines[:end])):
            return "\n".join(lines[:end])
    return ""


class Nodes:
    """The graph's nodes: each takes the state and returns its update. ``models`` maps a task (generation,
    completion, review) to a chat model whose requests route to it."""

    def __init__(self, models: dict[str, Any], sandbox: Sandbox, tasks: TasksConfig):
        self.models, self.sandbox, self.tasks = models, sandbox, tasks

    def guarded(self, node: str, task: str, messages: list[tuple[str, str]]):
        try:
            reply = call(self.models[task], messages)
        except CallFailed as e:
            return None, {"error": f"{node}: {e}", "steps": [{"node": node, "task": task, "error": str(e)}]}
        return reply, {"steps": [_step(node, task, reply)]}

    def plan(self, state: AgentState) -> dict:
        reply, update = self.guarded("plan", "generation", [
            ("system", "You are a senior Python engineer. Plan briefly."),
            ("user", f"Give a short numbered plan (at most 4 steps) for this job:\n\n{state['job']}")])
        return update | ({"plan": reply.text} if reply else {})

    def generate(self, state: AgentState) -> dict:
        if state.get("prompt"):
            reply, update = self.guarded("generate", "generation", body_messages(self.tasks, state["prompt"]))
            return update | (_function(state, reply) if reply else {})
        reply, update = self.guarded("generate", "generation", [
            ("system", "You are an expert Python programmer. Answer with code only."),
            ("user", f"{state['job']}\n\nPlan:\n{state.get('plan', '')}\n\nWrite the complete Python code.")])
        return update | (_written(reply) if reply else {})

    def complete(self, state: AgentState) -> dict:
        """Finish code that does not parse a line at a time with the completion route: drop the line that
        max_tokens cut in half, add at most MAX_COMPLETION_LINES lines (stopping when the model repeats itself),
        and if it still does not parse keep its longest parseable prefix, for the tests and review to judge."""
        code, steps = state.get("code", ""), []
        if parses(code):
            return {}
        if state.get("truncated") and "\n" in code:
            code = code.rsplit("\n", 1)[0]
        previous = None
        for _ in range(MAX_COMPLETION_LINES):
            if parses(code):
                break
            reply, update = self.guarded("complete", "completion", [
                ("system", "You are an expert Python programmer. Answer with code only."),
                ("user", f"Write the next line of this Python code. Reply with that one line only.\n\n{code}")])
            steps += update["steps"]
            if reply is None:
                return {"steps": steps, "error": update["error"]}
            line = next((ln for ln in _code_of(reply.text).splitlines() if ln.strip()), "")
            if not line or line == previous:
                break
            code, previous = f"{code}\n{line}", line
        if not parses(code):
            code = parseable_prefix(code) or code
        return {"code": code, "steps": steps}

    def run_tests(self, state: AgentState) -> dict:
        code, tests, entry_point = state.get("code", ""), state["tests"] or "", state.get("entry_point")
        result = self.sandbox.run(check_program(code, tests, entry_point) if entry_point else f"{code}\n\n{tests}\n")
        output = (result.stdout + result.stderr)[-2000:]
        return {"passed": result.passed, "test_output": output,
                "steps": [{"node": "run_tests", "status": result.status, "passed": result.passed,
                           "seconds": result.duration_s}]}

    def review(self, state: AgentState) -> dict:
        failures = "" if state.get("passed") is None else f"\n\nTest output:\n{state.get('test_output', '')}"
        numbered = "\n".join(f"{i:>3} | {ln}" for i, ln in enumerate(state.get("code", "").splitlines(), 1))
        reply, update = self.guarded("review", "review", [
            ("system", "You are a meticulous Python code reviewer."),
            ("user", "Review this Python function for a bug. If there is one, answer exactly in three lines:\n"
                     "line: <line number>\nkind: <kind>\nfix: <the corrected line>\n"
                     f"If there is no bug, answer: no issues\n\n{numbered}{failures}")])
        return update | ({"review": reply.text} if reply else {})

    def revise(self, state: AgentState) -> dict:
        if state.get("prompt"):
            feedback = (f"Current function:\n{state.get('code', '')}\n\nReview:\n{state.get('review', '')}\n\n"
                        f"Test output:\n{state.get('test_output', '')}")
            reply, update = self.guarded("revise", "generation", body_messages(self.tasks, state["prompt"], feedback))
            return update | {"revisions": state.get("revisions", 0) + 1} | (
                _function(state, reply, revising=True) if reply else {})
        reply, update = self.guarded("revise", "generation", [
            ("system", "You are an expert Python programmer. Answer with code only."),
            ("user", f"{state['job']}\n\nCurrent code:\n{state.get('code', '')}\n\nReview:\n{state.get('review', '')}"
                     f"\n\nTest output:\n{state.get('test_output', '')}\n\nWrite the corrected complete code.")])
        out = update | {"revisions": state.get("revisions", 0) + 1}
        return out | (_written(reply) if reply else {})

    @staticmethod
    def finish(state: AgentState) -> dict:
        return {"steps": [{"node": "finish", "passed": state.get("passed"), "error": state.get("error")}]}


# ------------------------------------------------------------------------------------------ edges
def after_tests(state: AgentState) -> str:  # a review only where a revision can follow it
    out_of_revisions = state.get("revisions", 0) >= state.get("max_revisions", 2)
    return "finish" if state.get("error") or state.get("passed") or out_of_revisions else "review"


def after_complete(state: AgentState) -> str:
    if state.get("error"):
        return "finish"
    return "run_tests" if state.get("tests") else "review"


def after_review(state: AgentState) -> str:
    if state.get("error") or state.get("revisions", 0) >= state.get("max_revisions", 2):
        return "finish"
    clean = re.search(r"\bno (issues?|bugs?)\b", state.get("review", ""), re.I) and not re.search(
        r"line\s*:?\s*\d+", state.get("review", ""), re.I)
    return "finish" if clean and state.get("passed") is not False else "revise"


def after_writing(state: AgentState) -> str:  # a function to complete is run as eval runs it: no completion
    return after_complete(state) if state.get("prompt") else "finish" if state.get("error") else "complete"


def after_plan(state: AgentState) -> str:
    return "finish" if state.get("error") else "generate"


def first_node(state: AgentState) -> str:
    return "generate" if state.get("prompt") else "plan"


def build_graph(llm_factory: Callable[[str], Any], *, sandbox: Sandbox | None = None, checkpointer=None,
                tasks: TasksConfig | None = None):
    """The compiled graph. ``llm_factory(task)`` returns a chat model whose requests route to ``task``; ``tasks``
    (default configs/tasks.yaml) holds the prompt a function to complete is asked with."""
    nodes = Nodes({task: llm_factory(task) for task in ("generation", "completion", "review")},
                  sandbox or Sandbox(), tasks or load_config(configs_dir() / "tasks.yaml", TasksConfig))
    graph = StateGraph(AgentState)
    for name in ("plan", "generate", "complete", "run_tests", "review", "revise", "finish"):
        graph.add_node(name, getattr(nodes, name))
    graph.add_conditional_edges(START, first_node, ["plan", "generate"])
    graph.add_conditional_edges("plan", after_plan, ["generate", "finish"])
    writing = ["complete", "run_tests", "review", "finish"]
    graph.add_conditional_edges("generate", after_writing, writing)
    graph.add_conditional_edges("complete", after_complete, ["run_tests", "review", "finish"])
    graph.add_conditional_edges("run_tests", after_tests, ["review", "finish"])
    graph.add_conditional_edges("review", after_review, ["revise", "finish"])
    graph.add_conditional_edges("revise", after_writing, writing)
    graph.add_edge("finish", END)
    return graph.compile(checkpointer=checkpointer)


def make_checkpointer(sqlite_path: str | None = None):
    """In memory by default; a SQLite file when asked (so a run can be resumed and inspected later)."""
    if sqlite_path:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        return SqliteSaver(sqlite3.connect(sqlite_path, check_same_thread=False))
    from langgraph.checkpoint.memory import InMemorySaver

    return InMemorySaver()


def run_agent(graph, job: str, *, tests: str | None = None, entry_point: str | None = None, max_revisions: int = 2,
              thread_id: str = "default", on_step: Callable[[dict], None] | None = None,
              prompt: str | None = None) -> AgentState:
    """Stream the graph, reporting each step as it happens; return the final state. ``prompt``: a function to
    complete (with its ``entry_point``), asked and assembled as `runtime eval` does."""
    if prompt and not entry_point:
        raise ValueError("a function to complete (prompt) needs its entry_point: the body is taken from that def")
    initial: AgentState = {"job": job, "prompt": prompt, "tests": tests, "entry_point": entry_point, "revisions": 0,
                           "max_revisions": max_revisions, "passed": None, "error": None, "steps": []}
    config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 12 + 6 * max_revisions}
    for update in graph.stream(initial, config, stream_mode="updates"):
        for node_update in update.values():
            for step in (node_update or {}).get("steps", []):
                if on_step:
                    on_step(step)
    return graph.get_state(config).values
