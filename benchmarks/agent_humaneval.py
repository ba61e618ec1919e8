"""The coding agent on HumanEval problems, once per deployment option, against a real `runtime serve`.

    .venv/bin/python benchmarks/agent_humaneval.py [--problems 20] [--options base experts mixed ...]
        [--workers 4] [--max-tokens 128] [--max-revisions 1]

Per option: solved share (the problem's own tests pass in the sandbox), mean steps, mean wall time per problem,
tokens, and calls per task route (from the runtime's route headers). Several agents run at once (--workers), so
the server batches their calls; wall times are per problem under that load.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from agents.coding_agent import build_graph, make_checkpointer, run_agent
from agents.llm import chat_factory
from runtime.bench.launch import ServerProcess
from training.tasks import load_items

OPTIONS = {  # option -> `runtime serve` arguments
    "base": ["--model", "smollm2-135m"],
    "experts": ["--deployment", "experts"],
    "mixed": ["--deployment", "mixed"],
    "merged-adapter": ["--deployment", "merged-adapter"],
    "merged": ["--deployment", "merged"],
    "hybrid": ["--deployment", "runs/bench-smollm2-135m-cpu/hybrid.yaml"],  # the plan `runtime bench` wrote
}


def job_text(prompt: str) -> str:
    return f"Complete this Python function so that it passes its tests:\n\n{prompt}"


def run_option(option: str, problems: list, workers: int, max_tokens: int, max_revisions: int) -> dict:
    with ServerProcess(OPTIONS[option]) as server:
        graph = build_graph(chat_factory(server.url, max_tokens=max_tokens), checkpointer=make_checkpointer())

        def solve(item) -> dict:
            start = time.perf_counter()
            state = run_agent(graph, job_text(item.input), tests=item.meta["test"],
                              entry_point=item.meta["entry_point"], max_revisions=max_revisions,
                              thread_id=f"{option}-{item.id}")
            calls = [s for s in state["steps"] if "route" in s]
            return {"solved": bool(state.get("passed")), "steps": len(state["steps"]),
                    "seconds": time.perf_counter() - start, "error": state.get("error"),
                    "tokens": sum(s.get("prompt_tokens", 0) + s.get("completion_tokens", 0) for s in calls),
                    "routes": Counter(f"{s['task']}->{s['route'].get('deployment', '?')}/"
                                      f"{s['route'].get('adapter') or '-'}" for s in calls)}

        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(solve, problems))
    n = len(results)
    routes = sum((r["routes"] for r in results), Counter())
    return {"option": option, "problems": n, "solved": sum(r["solved"] for r in results),
            "solved_share": sum(r["solved"] for r in results) / n, "mean_steps": sum(r["steps"] for r in results) / n,
            "mean_wall_s": sum(r["seconds"] for r in results) / n, "mean_tokens": sum(r["tokens"] for r in results) / n,
            "errors": sum(1 for r in results if r["error"]), "calls_per_route": dict(routes),
            "cold_start_s": server.cold_start_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-revisions", type=int, default=1)
    a = parser.parse_args()
    problems = load_items("humaneval", "test", a.problems)
    for option in a.options:
        print(json.dumps(run_option(option, problems, a.workers, a.max_tokens, a.max_revisions)), flush=True)


if __name__ == "__main__":
    main()
