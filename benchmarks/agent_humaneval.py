"""The coding agent on HumanEval problems, once per deployment option, against a real `runtime serve`: the bench's
agent column (runtime/bench/agent.py) for options outside a bench run.

    .venv/bin/python benchmarks/agent_humaneval.py [--problems 40] [--options base experts mixed ...]
        [--workers 4] [--max-tokens 600] [--max-revisions 2]

Per option: problems solved with the review -> revise loop, solved by the first generation alone (a single
generation's pass@1, as `runtime eval` scores it), what the loop adds, mean model calls and wall time per problem,
tokens, and calls per task route (from the runtime's route headers). Several agents run at once (--workers), so
the server batches their calls; wall times are per problem under that load.
"""

from __future__ import annotations

import argparse
import json
import logging

from runtime.bench.agent import run_on_server
from runtime.bench.config import AgentConfig
from runtime.bench.launch import ServerProcess
from runtime.config import TasksConfig, configs_dir, load_config
from runtime.tasks import load_items

log = logging.getLogger(__name__)
OPTIONS = {  # option -> `runtime serve` arguments
    "base": ["--model", "smollm2-135m"],
    "experts": ["--deployment", "experts"],
    "mixed": ["--deployment", "mixed"],
    "merged-adapter": ["--deployment", "merged-adapter"],
    "merged": ["--deployment", "merged"],
    "hybrid": ["--deployment", "runs/bench-smollm2-135m-cpu/hybrid.yaml"],  # the plan `runtime bench` wrote
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=600)
    parser.add_argument("--max-revisions", type=int, default=2)
    a = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = AgentConfig(n=a.problems, max_revisions=a.max_revisions, workers=a.workers, max_tokens=a.max_tokens)
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    problems = load_items("humaneval", "test", a.problems)
    for option in a.options:
        with ServerProcess(OPTIONS[option]) as server:
            summary = run_on_server(server.url, problems, cfg, tasks, label=option)
        summary.pop("records")
        log.info("%s", json.dumps({"option": option, **summary, "cold_start_s": server.cold_start_s}))


if __name__ == "__main__":
    main()
