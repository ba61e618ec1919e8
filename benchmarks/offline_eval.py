"""`runtime eval`'s offline generation: HFRunner's static batches vs the hf engine's continuous-batching scheduler,
side by side in one process, on HumanEval's prompts with natural stopping (eval's own workload), greedy.

    .venv/bin/python benchmarks/offline_eval.py [--model smollm2-135m] [--n 24] [--rounds 2] [--dtype auto]
        [--max-tokens N]

Per round: the wall time and output tokens of each path, how many answers the two paths give identically, and
how many of the engine's answers equal its previous round's (a continuous batch's rows and shapes depend on when
each request arrives and ends; in bf16 a different matmul shape can flip a greedy token).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from runtime.config import EngineConfig, TasksConfig, configs_dir, load_config  # noqa: E402
from runtime.engines.base import EngineRequest  # noqa: E402
from runtime.engines.hf import HFRunner  # noqa: E402
from runtime.engines.hf_engine import HFEngine  # noqa: E402
from runtime.evaluate import sampling_for  # noqa: E402
from runtime.models import ModelStore  # noqa: E402
from runtime.tasks import load_items  # noqa: E402
from runtime.tasks.prompts import messages_for  # noqa: E402


def through_engine(engine: HFEngine, prompts: list[str], params, width: int) -> list:
    async def run() -> list:
        slots = asyncio.Semaphore(width)

        async def one(i: int):
            async with slots:
                return await engine.generate(EngineRequest(f"offline-{i}", params, prompt=prompts[i]))

        return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=24, help="HumanEval problems (the first n)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="static batch size = rows in flight on the engine")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on this CPU) or float32")
    parser.add_argument("--max-tokens", type=int, default=None, help="cap HumanEval's answers (default: its cap)")
    args = parser.parse_args()
    path = ModelStore().get(args.model).path
    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    params = sampling_for(tasks, "humaneval")
    if args.max_tokens:
        params = dataclasses.replace(params, max_new_tokens=args.max_tokens)
    runner = HFRunner(path, dtype=args.dtype, max_batch_size=args.batch)
    engine = HFEngine(path, config=EngineConfig(dtype=args.dtype, max_batch_size=args.batch))
    prompts = [runner.render(messages_for(tasks, "humaneval", it)) for it in load_items("humaneval", "test", args.n)]
    previous = None
    for r in range(args.rounds):
        t = time.perf_counter()
        static = runner.generate(prompts, params)
        t_static = time.perf_counter() - t
        t = time.perf_counter()
        served = through_engine(engine, prompts, params, args.batch)
        t_engine = time.perf_counter() - t
        same = sum(a.text == b.text for a, b in zip(static, served, strict=True))
        again = "" if previous is None else (
            f", engine = its previous round {sum(a.text == b.text for a, b in zip(previous, served, strict=True))}"
            f"/{len(served)}")
        print(f"round {r}: static {t_static:.1f} s ({sum(g.completion_tokens for g in static)} tokens), engine "
              f"{t_engine:.1f} s ({sum(g.completion_tokens for g in served)} tokens): {t_static / t_engine:.2f}x; "
              f"static = engine {same}/{len(served)}{again}", flush=True)
        previous = served


if __name__ == "__main__":
    main()
