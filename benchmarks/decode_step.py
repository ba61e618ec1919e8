"""The hf engine's packed decode step, alone: ``rows`` rows decoding over their prompts' cache, and one prompt's
prefill, timed in the engine's forward thread (Qwen2.5-Coder-0.5B from the store, bf16, prepacked).

    .venv/bin/python benchmarks/decode_step.py [--rows 8 16] [--prefill 256] [--profile] [--adapters NAME ...]

``--adapters``: store models that are LoRA adapters of it (``qwen-lora-mix``; the four experts), resident in the
engine, the rows on them in turn (one name: every row on it, the mix's case); the prefill runs on the first.

Against another commit: run it with ``PYTHONPATH`` set to a worktree of that commit (same machine, one after the
other, interleaved). Prints the median step of 50 (after 10 warm-up steps) and, with ``--profile``, the ops of 10.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from runtime.config import EngineConfig
from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.hf_engine import HFEngine
from runtime.engines.scheduler import Batch, Job, packed_step
from runtime.engines.threads import fit
from runtime.models import mixmerge_home


def decode(engine: HFEngine, rows: int, profile: bool, adapters: list[str]) -> str:
    import torch

    model, tokenizer, loop = engine.runner.model, engine.runner.tokenizer, asyncio.new_event_loop()
    lora = engine.slots.lora if adapters else None
    batch = Batch()
    with torch.inference_mode():
        for i in range(rows):  # prompts of 130 to 130 + 45 * rows tokens
            ids = tokenizer(f"Write a Python function number {i} that "
                            + "does something useful with lists " * (20 + 3 * i))["input_ids"]
            job = Job(EngineRequest(f"r{i}", SamplingParams(max_new_tokens=512, ignore_eos=True), prompt="x",
                                    adapter=adapters[i % len(adapters)] if adapters else None), ids, loop)
            packed_step(model, lora, Batch(), [(job, len(ids))])
            batch.join(job, 1)
        times = []
        for _ in range(60):
            start = time.perf_counter()
            logits, _ = packed_step(model, lora, batch, [])
            batch.pending = logits.argmax(-1).tolist()
            times.append(time.perf_counter() - start)
        line = f"decode, {rows} rows: {sorted(times[10:])[25] * 1000:.1f} ms a step (cache width {batch.mask.shape[1]})"
        if profile:
            with torch.profiler.profile() as prof:
                for _ in range(10):
                    packed_step(model, lora, batch, [])
            line += "\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return line


def prefill(engine: HFEngine, tokens: int, adapter: str | None) -> str:
    import torch

    model, tokenizer, loop = engine.runner.model, engine.runner.tokenizer, asyncio.new_event_loop()
    ids = tokenizer("def f(x):\n    return x\n" * tokens)["input_ids"][:tokens]
    times = []
    with torch.inference_mode():
        for _ in range(5):
            job = Job(EngineRequest("p", SamplingParams(max_new_tokens=8), prompt="x", adapter=adapter), ids, loop)
            start = time.perf_counter()
            packed_step(model, engine.slots.lora if adapter else None, Batch(), [(job, tokens)])
            times.append(time.perf_counter() - start)
    best = min(times[1:])
    return f"prefill, {tokens} tokens: {best * 1000:.0f} ms ({tokens / best:.0f} tokens/s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--prefill", type=int, default=256)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--adapters", nargs="*", default=[])
    args = parser.parse_args()
    models = mixmerge_home() / "models"
    engine = HFEngine(models / "qwen2.5-coder-0.5b", {name: models / name for name in args.adapters},
                      EngineConfig(dtype="bfloat16", max_loras=max(len(args.adapters), 1)))

    def run() -> list[str]:
        fit(0)  # the forward thread's cores, as the engine's own steps have them
        first = args.adapters[0] if args.adapters else None
        return [prefill(engine, args.prefill, first),
                *(decode(engine, rows, args.profile, args.adapters) for rows in args.rows)]

    for line in engine._worker.submit(run).result():
        print(line)


if __name__ == "__main__":
    main()
