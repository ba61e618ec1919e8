"""The coding agent on HumanEval against a served option, over HTTP with LangChain's ChatOpenAI: the bench's
"agent" column and ``benchmarks/agent_humaneval.py`` both run it from here.

Each problem is given as eval gives it (the function's prompt, eval's HumanEval request and assembly); the agent
runs its tests, and with ``max_revisions`` > 0 reviews and revises until they pass or the revisions run out.
``first_try`` is whether the first generation already passed: the pass@1 of a single generation, so
``solved - first_try`` is what the review -> revise loop adds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from agents.coding_agent import build_graph, make_checkpointer, run_agent
from agents.llm import chat_factory
from runtime.bench.config import AgentConfig
from runtime.config import TasksConfig
from runtime.stats import clopper_pearson
from runtime.tasks import TaskItem
from runtime.tasks.sandbox import Sandbox

CALL_TIMEOUT_S = 900.0  # as the bench's scoring requests: 600 tokens from a 0.5B model on shared CPU cores, with
# `workers` agents at once, outlast ChatOpenAI's usual 120 s, and a timed-out call is asked again from the start


def solve(graph, item: TaskItem, max_revisions: int, thread: str) -> dict:
    """One problem: {id, solved, first_try, calls, seconds, tokens, error, routes}."""
    start = time.perf_counter()
    state = run_agent(graph, f"Complete this Python function so that it passes its tests:\n\n{item.input}",
                      prompt=item.input, tests=item.meta["test"], entry_point=item.meta["entry_point"],
                      max_revisions=max_revisions, thread_id=thread)
    calls = [s for s in state["steps"] if "task" in s]
    tests = [s for s in state["steps"] if s["node"] == "run_tests"]
    return {"id": item.id, "solved": bool(state.get("passed")), "first_try": bool(tests and tests[0].get("passed")),
            "calls": len(calls), "seconds": round(time.perf_counter() - start, 3),
            "tokens": sum(s.get("prompt_tokens", 0) + s.get("completion_tokens", 0) for s in calls),
            "error": state.get("error"),
            "routes": Counter(f"{s['task']}->{(s.get('route') or {}).get('deployment', '?')}/"
                              f"{(s.get('route') or {}).get('adapter') or '-'}" for s in calls)}


def summarize(records: list[dict], cfg: AgentConfig) -> dict:
    """Problems solved with the loop, solved by the first generation alone, what the loop adds (points), the
    mean model calls and wall time per problem, errors, and calls per route."""
    n = len(records)
    solved, first = sum(r["solved"] for r in records), sum(r["first_try"] for r in records)
    low, high = clopper_pearson(solved, n)
    return {"problems": n, "solved": solved, "solved_share": round(100 * solved / max(n, 1), 2),
            "ci95": [round(100 * low, 2), round(100 * high, 2)], "first_try": first,
            "first_try_share": round(100 * first / max(n, 1), 2),
            "loop_adds": round(100 * (solved - first) / max(n, 1), 2),
            "mean_calls": round(sum(r["calls"] for r in records) / max(n, 1), 2),
            "mean_wall_s": round(sum(r["seconds"] for r in records) / max(n, 1), 2),
            "mean_tokens": round(sum(r["tokens"] for r in records) / max(n, 1), 1),
            "errors": sum(1 for r in records if r["error"]),
            "calls_per_route": dict(sum((Counter(r["routes"]) for r in records), Counter())),
            "max_revisions": cfg.max_revisions, "workers": cfg.workers}


def run_on_server(url: str, problems: list[TaskItem], cfg: AgentConfig, tasks: TasksConfig,
                  sandbox: Sandbox | None = None, api_key: str = "none", label: str = "agent",
                  done: list[dict] = (), on_record: Callable[[dict], None] | None = None) -> dict:
    """The agent on every problem against the server at ``url`` (its /v1), ``cfg.workers`` at once so the server
    batches their calls; wall times are per problem under that load. The summary plus ``records`` (in problem
    order). Problems with a record in ``done`` (a resumed phase) are not run again; ``on_record`` gets each new
    record as it finishes (its journal)."""
    caps = {"generation": cfg.max_tokens} | {t: tasks.tasks[t].max_new_tokens for t in ("completion", "review")}
    llm = chat_factory(url, api_key, max_tokens=caps, timeout_s=CALL_TIMEOUT_S)
    graph = build_graph(llm, sandbox=sandbox or Sandbox(), checkpointer=make_checkpointer(), tasks=tasks)
    have = {r["id"]: r for r in done}

    def one(item: TaskItem) -> dict:
        record = solve(graph, item, cfg.max_revisions, f"{label}-{item.id}")
        record["routes"] = dict(record["routes"])
        if on_record:
            on_record(record)
        return record

    with ThreadPoolExecutor(cfg.workers) as pool:
        new = {r["id"]: r for r in pool.map(one, [p for p in problems if p.id not in have])}
    records = [have.get(p.id) or new[p.id] for p in problems]
    return summarize(records, cfg) | {"records": records}
