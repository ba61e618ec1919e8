"""Decode at batch 1 as a share of the memory-bandwidth limit, on this machine.

    .venv/bin/python benchmarks/bandwidth.py [--models smollm2-135m,qwen2.5-coder-0.5b] [--tokens 32] [--threads 1]

At batch 1 every decode step reads every weight once but the input embedding table, of which it reads one row (a
tied table is read whole by the LM head), so a step cannot take less than ``those bytes / read bandwidth``. Read
bandwidth: the best of several sums of a 1 GiB float32 array (torch, its threads; numpy too), which stream the
array from memory once. Decode: the median step of a greedy loop of the bare model (``model(...)`` with a KV
cache, bf16), the same model with its linears prepacked (runtime/engines/prepacked.py), and the hf engine (one
streamed request, ``ignore_eos``: its inter-token gaps) without and with them. Share = the bound / the measured
step: 1.0 would be decode at the memory limit. ``--threads`` sets torch's threads for all of it:
on cores shared with other busy processes, two OpenMP threads wait on each other at every barrier (a 135M forward
took 3 s with 2 threads, 0.1 s with 1 while a training run held the cores), so 1 (the default) measures one
core's share of both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

log = logging.getLogger("bandwidth")


def read_bandwidth(gib: float = 1.0, repeats: int = 7) -> dict[str, float]:
    """GB/s of a full read of a ``gib`` GiB array: torch and numpy, the best of ``repeats``."""
    import numpy as np
    import torch

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    n = int(gib * 2**30) // 4
    tensor, array = torch.ones(n, dtype=torch.float32), np.ones(n, dtype=np.float32)
    size = n * 4
    return {"torch_gb_s": size / best(tensor.sum) / 1e9, "numpy_gb_s": size / best(array.sum) / 1e9}


def bare_decode(model, tokenizer, tokens: int) -> float:
    """The median seconds of one greedy decode step of the bare model at batch 1."""
    import torch
    from transformers import DynamicCache

    ids = tokenizer("def fibonacci(n):", return_tensors="pt")["input_ids"]
    cache, steps = DynamicCache(), []
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        for _ in range(tokens):
            token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            start = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            steps.append(time.perf_counter() - start)
    return statistics.median(steps)


def engine_decode(path: Path, tokens: int, prepacked: bool = True) -> float:
    """The median gap between tokens of one streamed request on the hf engine (bf16); ``prepacked=False``: with its
    linears left as loaded (the engine before runtime/engines/prepacked.py)."""
    from unittest import mock

    from runtime.config import EngineConfig
    from runtime.engines import hf
    from runtime.engines.base import EngineRequest, SamplingParams
    from runtime.engines.hf_engine import HFEngine

    if not prepacked:
        with mock.patch.object(hf, "prepack", lambda model: model):
            return engine_decode(path, tokens)

    async def run() -> list[float]:
        engine = HFEngine(path, {}, EngineConfig(dtype="bfloat16", max_batch_size=1))
        request = EngineRequest("b", SamplingParams(max_new_tokens=tokens, ignore_eos=True), prompt="def fibonacci(n):")
        gaps, last = [], None
        try:
            async for _ in engine.stream(request):
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now
        finally:
            await engine.aclose()
        return gaps

    return statistics.median(asyncio.run(run()))


def measure(name: str, tokens: int, bandwidth: float) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.engines.prepacked import prepack
    from runtime.models import ModelStore

    path = ModelStore().get(name).path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    table = model.get_input_embeddings().weight
    if model.get_output_embeddings().weight is not table:  # untied: the step reads one row of it
        weights -= table.numel() * table.element_size()
    bound = weights / (bandwidth * 1e9)
    tokenizer = AutoTokenizer.from_pretrained(path)
    bare = bare_decode(model, tokenizer, tokens)
    packed = bare_decode(prepack(model), tokenizer, tokens)
    del model
    stock, engine = engine_decode(path, tokens, prepacked=False), engine_decode(path, tokens)
    return {"weights_mb": weights / 2**20, "bound_ms": bound * 1e3, "bare_ms": bare * 1e3,
            "packed_ms": packed * 1e3, "stock_engine_ms": stock * 1e3, "engine_ms": engine * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)

    bw = read_bandwidth()
    bandwidth = max(bw.values())
    print(f"read bandwidth: torch {bw['torch_gb_s']:.1f} GB/s, numpy {bw['numpy_gb_s']:.1f} GB/s "
          f"({torch.get_num_threads()} torch threads); the bound uses {bandwidth:.1f} GB/s")
    print("step (share of the bound): the bare model as loaded, then prepacked; the engine without and with its "
          "prepacked linears\n"
          "| model (bf16) | bytes read/step | bound/step | bare step | bare prepacked | engine, stock linears | "
          "engine |\n|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        r = measure(name, args.tokens, bandwidth)
        cells = [f"{r[k]:.1f} ms ({r['bound_ms'] / r[k]:.2f})" for k in ("bare_ms", "packed_ms", "stock_engine_ms",
                                                                          "engine_ms")]
        print(f"| {name} | {r['weights_mb']:.0f} MB | {r['bound_ms']:.1f} ms | " + " | ".join(cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
