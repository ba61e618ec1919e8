"""engine.adaptive on a skewed workload: LoRA experts, adaptive placement and a full model, side by side in one run.

    .venv/bin/python benchmarks/adaptive.py [--model smollm2-135m] [--n 48] [--tokens 32] [--repeats 2] [--threads 1]
        [--options experts,adaptive,full]

Four LoRA adapters on ``--model`` (the store's experts whose parent is ``--model``, one ``*-lora-<task>`` per task,
as ``qwen-lora-*`` on qwen2.5-coder-0.5b; else random r16 all-linear ones of the trained experts' shape:
``tests/loras.make_lora``, non-zero B, same compute).
A skewed load: ``--n`` chat prompts, 70% to the generation adapter and the rest spread over the other three in a
fixed shuffled order, each decoding exactly ``--tokens`` tokens (``ignore_eos``), streamed at concurrency 8, bf16,
all on the in-process hf engine (no HTTP). The engines (``--options``), measured in turn, ``--repeats`` rounds
interleaved:

- ``experts``: every request on its LoRA adapter (mixed-adapter batches, the grouped LoRA forward of
  ``runtime/engines/lora.py``);
- ``peft``: the same through PEFT's own mixed-adapter forward (``adapter_names=``), what ``experts`` ran before
  the grouped forward (only with ``--options``);
- ``adaptive``: the same with ``engine.adaptive`` (window 16): the warm-up (the first 16 requests of the same mix)
  folds the generation adapter; the measured run serves it from the folded copy, the rest on LoRA;
- ``full``: the base model with no adapter, every request: what a merged model costs (a merge has the base's
  architecture and size; with no merged SmolLM2 in the store it stands in for ``merged``).

Each: output tok/s over the wall time, TTFT p50 and the p99 inter-token latency of the streams. ``--threads``:
torch's threads (1 by default: with the cores shared by other busy processes, two OpenMP threads wait on each
other at every barrier and a step takes up to 30x longer; see bandwidth.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from runtime.config import TASKS, AdaptiveConfig, EngineConfig  # noqa: E402
from runtime.engines.base import EngineRequest, SamplingParams  # noqa: E402
from runtime.engines.hf_engine import HFEngine  # noqa: E402

log = logging.getLogger("adaptive")
TOPICS = ["reverse a string", "merge two sorted lists", "parse an ISO date and return the weekday",
          "count the words in a file, ignoring case and punctuation", "flatten a nested list",
          "check whether a number is prime", "read a CSV file and sum one of its columns by a key column",
          "retry a function call with exponential backoff and a maximum number of attempts"]


def mix(n: int, dominant: str = "generation", share: float = 0.7, seed: int = 0) -> list[str]:
    """``n`` adapter names: ``share`` of them the dominant one, the rest spread evenly, in a fixed shuffle."""
    others = [t for t in TASKS if t != dominant]
    k = round(n * share)
    names = [dominant] * k + [others[i % len(others)] for i in range(n - k)]
    random.Random(seed).shuffle(names)
    return names


def request(i: int, tokens: int, adapter: str | None) -> EngineRequest:
    prompt = f"Write a Python function to {TOPICS[i % len(TOPICS)]}. Call it task_{i}."
    return EngineRequest(f"a{i}", SamplingParams(max_new_tokens=tokens, ignore_eos=True),
                         messages=[{"role": "user", "content": prompt}], adapter=adapter)


async def stream(engine: HFEngine, req: EngineRequest) -> tuple[float, list[float], int]:
    """Time to first token, the gaps between later deltas, and the tokens decoded."""
    start = last = time.perf_counter()
    first, gaps, tokens = None, [], 0
    async for delta in engine.stream(req):
        now = time.perf_counter()
        if first is None:
            first = now - start
        else:
            gaps.append(now - last)
        last, tokens = now, delta.completion_tokens
    return first or 0.0, gaps, tokens


async def run_load(engine: HFEngine, requests: list[EngineRequest], concurrency: int) -> dict[str, float]:
    limit = asyncio.Semaphore(concurrency)

    async def limited(req: EngineRequest):
        async with limit:
            return await stream(engine, req)

    start = time.perf_counter()
    results = await asyncio.gather(*(limited(r) for r in requests))
    wall = time.perf_counter() - start
    gaps = sorted(g for _, gs, _ in results for g in gs)
    return {"tok_s": sum(t for *_, t in results) / wall, "ttft_p50_ms": statistics.median(f for f, *_ in results) * 1e3,
            "itl_p99_ms": gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))] * 1e3 if gaps else 0.0}


async def measure(option: str, model: Path, adapters: dict[str, Path], names: list[str], warm: list[str],
                  tokens: int, dtype: str) -> dict:
    adaptive = AdaptiveConfig(window=16, min_requests=8) if option == "adaptive" else None
    engine = HFEngine(model, adapters if option != "full" else {},
                      EngineConfig(dtype=dtype, max_batch_size=8, max_loras=4, adaptive=adaptive))
    if option == "peft":  # every adapter is resident from the start and none is loaded later: nothing re-syncs
        engine.slots.lora.grouped = False
    pick = (lambda name: None) if option == "full" else (lambda name: name)
    try:
        await run_load(engine, [request(i, tokens, pick(a)) for i, a in enumerate(warm)], 8)
        while option == "adaptive" and engine.placement_status()["mode"] == "folding":
            await asyncio.sleep(0.05)  # the warm-up started the fold: the measured run starts from its result
        result = await run_load(engine, [request(i, tokens, pick(a)) for i, a in enumerate(names)], 8)
        if engine.placement:
            status = engine.placement_status()
            result |= {"placement": status["mode"], "folded_rows": status["folded_rows"], "fold_ms": status["fold_ms"]}
        return result
    finally:
        await engine.aclose()


def adapters_for(model_name: str, model: Path) -> tuple[dict[str, Path], str]:
    from runtime.models import ModelStore

    experts = {e.name.rsplit("-", 1)[-1]: e.path for e in ModelStore().list()
               if e.kind == "expert" and e.parent == model_name and e.name.endswith(tuple(f"-lora-{t}" for t in TASKS))}
    if set(experts) == set(TASKS):
        return experts, "the store's trained experts"
    from loras import make_lora

    root = Path(tempfile.mkdtemp())
    return ({t: make_lora(model, root / t, i + 1, rank=16) for i, t in enumerate(TASKS)},
            "random r16 all-linear adapters (no trained experts for this model in the store)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--options", default="experts,adaptive,full", help="comma-separated; also: peft")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("runtime.engines.adaptive").setLevel(logging.INFO)
    from runtime.models import ModelStore

    model = ModelStore().get(args.model).path
    adapters, source = adapters_for(args.model, model)
    names, warm = mix(args.n), mix(16, seed=1)
    print(f"{args.model} {args.dtype}, {args.threads} torch thread(s), adapters: {source}; {args.n} requests "
          f"({names.count('generation')} generation) x {args.tokens} tokens, ignore_eos, concurrency 8")
    print("| round | engine | out tok/s | TTFT p50 | p99 ITL | placement |\n|---|---|---:|---:|---:|---|")
    rounds: list[dict[str, float]] = []
    for r in range(args.repeats):
        rounds.append({})
        for option in args.options.split(","):
            m = asyncio.run(measure(option, model, adapters, names, warm, args.tokens, args.dtype))
            rounds[-1][option] = m["tok_s"]
            where = f"{m['placement']}, {m['folded_rows']} rows folded, fold {m['fold_ms']} ms" if "placement" in m \
                else ""
            print(f"| {r + 1} | {option} | {m['tok_s']:.1f} | {m['ttft_p50_ms']:.0f} ms | {m['itl_p99_ms']:.0f} ms "
                  f"| {where} |", flush=True)
    summarize(rounds)


def summarize(rounds: list[dict[str, float]]) -> None:
    """Each option's out tok/s over ``full``'s in the same round (the load on shared cores drifts between rounds,
    so only a round's own ratios are compared), and their median."""
    if "full" not in rounds[0]:
        return
    for option in [o for o in rounds[0] if o != "full"]:
        ratios = [r[option] / r["full"] for r in rounds]
        print(f"{option} / full out tok/s by round: {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
