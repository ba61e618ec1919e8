"""The hf engine's scheduler: static batches (the engine before continuous batching, run from git) vs
continuous batching, one after the other in one run, on a fixed-length streamed load.

    .venv/bin/python benchmarks/continuous_batching.py [--n 32] [--tokens 32] [--models tiny,smollm2-135m]

The static scheduler runs in a child process over the whole ``runtime`` package as it was at STATIC_COMMIT
(``git archive``): its engine imports helpers that have since changed, so it cannot be loaded beside today's.
For each model (the tiny random test model, and SmolLM2-135M from the store, bf16) and scheduler: ``--n``
chat prompts of varied length, ``--tokens`` new tokens each with ``ignore_eos`` (every answer as long), streamed at
concurrency 1 and 8; output tokens/s over the wall time and the median time to first token. Then the new
engine's adapter hot-load: an r16 LoRA on every linear layer loaded while a request streams, the ms it held the
model (``slots.lock_ms``; the first adapter wraps the model, the next ones are set into its LoRA layers).
With ``--hotload-itl``: the p99 inter-token latency of 4 streams on the base model, without and then with r16
adapters hot-loaded one after another while they stream, and each load's end-to-end ms (only that part runs).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_TREE = os.environ.get("MIXMERGE_STATIC_TREE")  # set in the static scheduler's child: the package at that commit
sys.path[:0] = [OLD_TREE or str(ROOT), str(ROOT / "tests")]

from runtime.config import EngineConfig  # noqa: E402
from runtime.engines.base import EngineRequest, SamplingParams  # noqa: E402
from runtime.engines.hf_engine import HFEngine  # noqa: E402

log = logging.getLogger("continuous_batching")
STATIC_COMMIT = "87273e9"  # the last hf_engine.py with the static scheduler
TOPICS = ["reverse a string", "merge two sorted lists", "parse an ISO date and return the weekday",
          "count the words in a file, ignoring case and punctuation", "flatten a nested list",
          "check whether a number is prime", "read a CSV file and sum one of its columns by a key column",
          "retry a function call with exponential backoff and a maximum number of attempts"]


def static_tree() -> Path:
    """The ``runtime`` package at STATIC_COMMIT in a temp folder (nothing in the checkout changes)."""
    tree = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "archive", STATIC_COMMIT, "runtime"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def measure_static(tree: Path, model: Path, dtype: str, n: int, tokens: int) -> dict:
    """``measure`` with the static engine, in a child process over ``tree``."""
    out = subprocess.run([sys.executable, __file__, "--measure", str(model), "--dtype", dtype, "--n", str(n),
                          "--tokens", str(tokens)], env={**os.environ, "MIXMERGE_STATIC_TREE": str(tree)},
                         check=True, stdout=subprocess.PIPE, text=True).stdout  # its stderr shows here
    return {int(c): r for c, r in json.loads(out.splitlines()[-1]).items()}


def request(i: int, tokens: int, adapter: str | None = None) -> EngineRequest:
    prompt = f"Write a Python function to {TOPICS[i % len(TOPICS)]}. Call it task_{i}."
    return EngineRequest(f"b{i}", SamplingParams(max_new_tokens=tokens, ignore_eos=True),
                         messages=[{"role": "user", "content": prompt}], adapter=adapter)


async def one(engine, req: EngineRequest) -> tuple[float, int]:
    start, first, tokens = time.perf_counter(), None, 0
    async for delta in engine.stream(req):
        if first is None and delta.text:
            first = time.perf_counter() - start
        tokens = delta.completion_tokens
    return first if first is not None else time.perf_counter() - start, tokens


async def load(engine, n: int, tokens: int, concurrency: int) -> dict:
    limit = asyncio.Semaphore(concurrency)

    async def limited(i: int):
        async with limit:
            return await one(engine, request(i, tokens))

    await one(engine, request(0, 4))  # warm-up
    start = time.perf_counter()
    results = await asyncio.gather(*(limited(i) for i in range(n)))
    wall = time.perf_counter() - start
    return {"tok_s": sum(t for _, t in results) / wall, "ttft_p50_ms": statistics.median(f for f, _ in results) * 1e3}


async def measure(cls, model: Path, dtype: str, n: int, tokens: int) -> dict:
    engine = cls(model, {}, EngineConfig(dtype=dtype, max_batch_size=8))
    try:
        return {c: await load(engine, n, tokens, c) for c in (1, 8)}
    finally:
        await engine.aclose()


async def hot_load(model: Path, dtype: str, tokens: int) -> dict[str, float]:
    from loras import make_lora

    root = Path(tempfile.mkdtemp())
    lora = make_lora(model, root / "r16", 1, rank=16)
    engine = HFEngine(model, {}, EngineConfig(dtype=dtype, max_loras=4))
    try:
        for name in ("first", "second", "third"):
            running = asyncio.ensure_future(one(engine, request(1, tokens)))
            await engine.load_adapter(name, str(lora))
            await running
        return dict(engine.slots.lock_ms)
    finally:
        await engine.aclose()


async def gaps(engine, req: EngineRequest) -> list[float]:
    """The seconds between one stream's successive deltas."""
    out, last = [], None
    async for _ in engine.stream(req):
        now = time.perf_counter()
        if last is not None:
            out.append(now - last)
        last = now
    return out


async def hotload_itl(model: Path, dtype: str, tokens: int, loads: int = 3) -> dict:
    """p99 ITL of 4 streams without, then with ``loads`` r16 adapters loaded while they stream (after one load
    that wraps the model in PEFT, done before either, so both sides run the same wrapped model)."""
    import numpy as np
    from loras import make_lora

    lora = make_lora(model, Path(tempfile.mkdtemp()) / "r16", 1, rank=16)
    engine = HFEngine(model, {}, EngineConfig(dtype=dtype, max_loras=loads + 2))
    streams = [request(i, tokens) for i in range(4)]
    try:
        await engine.load_adapter("wrap", str(lora))
        await one(engine, request(0, 4))  # warm-up
        quiet = [g for gs in await asyncio.gather(*(gaps(engine, r) for r in streams)) for g in gs]
        running = asyncio.ensure_future(asyncio.gather(*(gaps(engine, r) for r in streams)))
        load_ms = []
        for i in range(loads):
            await asyncio.sleep(0.2)
            load_ms.append(await engine.load_adapter(f"hot{i}", str(lora)))
        overlapped = not running.done()  # every load ended while the streams still ran
        busy = [g for gs in await running for g in gs]
        return {"p99_itl_ms_without": float(np.percentile(quiet, 99)) * 1e3,
                "p99_itl_ms_with": float(np.percentile(busy, 99)) * 1e3, "load_ms": load_ms,
                "lock_ms": [engine.slots.lock_ms[f"hot{i}"] for i in range(loads)], "overlapped": overlapped}
    finally:
        await engine.aclose()


def model_path(name: str) -> Path:
    if name == "tiny":
        from tiny import build_tiny_model_dir

        return build_tiny_model_dir(Path(tempfile.mkdtemp()) / "tiny-llama")
    from runtime.models import ModelStore

    return ModelStore().get(name).path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--hotload-itl", action="store_true", help="only the in-flight ITL around adapter loads")
    parser.add_argument("--threads", type=int, help="torch threads (1 on cores shared with busy processes)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child: one model, one JSON line
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        import os

        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the engine keeps an explicit setting
        torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(asyncio.run(measure(HFEngine, args.measure, args.dtype, args.n, args.tokens))))
        return
    if args.hotload_itl:
        for name in args.models.split(","):
            print(name, args.dtype, asyncio.run(hotload_itl(model_path(name), args.dtype, args.tokens)), flush=True)
        return
    tree = static_tree()
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    for name in args.models.split(","):
        path = model_path(name)
        print(f"\n{name} ({args.dtype}), {args.n} prompts x {args.tokens} tokens, ignore_eos, streamed")
        print("| scheduler | c=1 tok/s | c=8 tok/s | TTFT p50 c=1 | TTFT p50 c=8 |\n|---|---:|---:|---:|---:|")
        for label in ("static", "continuous"):
            r = measure_static(tree, path, args.dtype, args.n, args.tokens) if label == "static" else \
                asyncio.run(measure(HFEngine, path, args.dtype, args.n, args.tokens))
            print(f"| {label} | {r[1]['tok_s']:.1f} | {r[8]['tok_s']:.1f} | {r[1]['ttft_p50_ms']:.0f} ms "
                  f"| {r[8]['ttft_p50_ms']:.0f} ms |", flush=True)
        locks = asyncio.run(hot_load(path, args.dtype, args.tokens))
        print("r16 adapter loaded mid-stream, ms holding the model: "
              + ", ".join(f"{k} {v:.1f}" for k, v in locks.items()), flush=True)


if __name__ == "__main__":
    main()
