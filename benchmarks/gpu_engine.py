"""The `hf` engine on a GPU (issue #16, item 6): models of Qwen2.5-Coder-0.5B's and 1.5B's configs with random
weights (no download), bf16, a fixed-length load (every request decodes exactly --new-tokens tokens, `ignore_eos`)
at concurrency 1, 8 and 32, straight into the engine: the device machine has no fastapi/uvicorn, so no HTTP server.
Beside each engine figure, on the same prompts and the same machine:

- transformers' own ``generate`` on the same prompts as a static batch (``min_new_tokens = max_new_tokens``): what
  the library alone does with the same work;
- experts: four random r16 adapters (every linear layer, B not zero) in turn, same load, vs the base model at c=8;
- mixed adapters in one running batch vs each request alone: greedy tokens compared (bf16 and float32);
- decode at batch 1 as a share of the memory-bandwidth limit: weight bytes / measured device copy bandwidth,
  divided by the measured c=1 step time;
- the bare model's decode step (StaticCache), eager and replayed from a CUDA graph: what launching costs a step
  (``--ceiling-only``: this and the engine's loads alone);
- ``--paths``: the engine's other device paths in float32 against adapters loaded at start (hot-load, eviction,
  steps apart, ``engine.adaptive``'s fold, ``runtime eval``'s offline runner).

    python benchmarks/gpu_engine.py --models DIR [--out FILE.json]
    .venv/bin/python benchmarks/gpu_engine.py --models DIR --device cpu --layers 2 --new-tokens 8   # smoke test

DIR holds one folder per model with its config.json (a tokenizer in the first one; the Qwen2.5 models share it),
copied from the store (`runtime models pull qwen2.5-coder-0.5b`). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from runtime.config import EngineConfig
from runtime.engines.adaptive import weight_bytes
from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.hf_engine import HFEngine

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build(config_dir: Path, tokenizer_dir: Path, out: Path, layers: int | None, device: str) -> Path:
    """A model of ``config_dir``'s config with random weights (seed 0), saved in bf16 with the tokenizer."""
    config = AutoConfig.from_pretrained(config_dir)
    if layers:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:layers]
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


def adapters(model_dir: Path, out: Path, device: str, count: int = 4) -> dict[str, Path]:
    """``count`` r16 LoRA adapters on every linear layer, A and B random (B ~ N(0, 0.02): a real delta)."""
    from peft import LoraConfig, get_peft_model

    made = {}
    for i in range(count):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        made[f"expert{i}"] = out / f"expert{i}"
        peft.save_pretrained(made[f"expert{i}"])
        del peft, model
    return made


def prompts(tokenizer, count: int, length: int) -> list[str]:
    """``count`` different prompts of ``length`` tokens each: windows of this project's own source text."""
    text = "\n".join(p.read_text() for p in sorted(Path(__file__).resolve().parents[1].glob("runtime/**/*.py")))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    step = max(1, (len(ids) - length) // count)
    return [tokenizer.decode(ids[i * step:i * step + length]) for i in range(count)]


async def load(engine: HFEngine, texts: list[str], concurrency: int, new_tokens: int,
               names: list[str | None] | None = None) -> dict:
    """Every prompt through ``engine.stream`` at ``concurrency``, each decoding exactly ``new_tokens``."""
    gate = asyncio.Semaphore(concurrency)
    names = names or [None] * len(texts)
    rows: list[dict] = []

    async def one(i: int) -> None:
        async with gate:
            start, stamps, last = time.perf_counter(), [], None
            params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
            async for delta in engine.stream(EngineRequest(f"r{i}", params, prompt=texts[i], adapter=names[i])):
                stamps.append(time.perf_counter())
                last = delta
            rows.append(dict(ttft=stamps[0] - start, e2el=stamps[-1] - start, tokens=last.completion_tokens,
                             gaps=[b - a for a, b in zip(stamps, stamps[1:], strict=False)]))

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(texts))))
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in rows)
    assert tokens == new_tokens * len(texts), f"fixed-length load decoded {tokens} tokens"
    gaps = [g * 1000 for r in rows for g in r["gaps"]]
    return {"concurrency": concurrency, "requests": len(texts), "out_tok_s": round(tokens / wall, 1),
            "ttft_p50_ms": round(np.percentile([r["ttft"] * 1000 for r in rows], 50), 1),
            "itl_p50_ms": round(np.percentile(gaps, 50), 2), "itl_p99_ms": round(np.percentile(gaps, 99), 2),
            "e2el_p90_s": round(np.percentile([r["e2el"] for r in rows], 90), 2)}


def static_generate(model_dir: Path, texts: list[str], new_tokens: int, device: str) -> float:
    """transformers' ``generate`` (sdpa, its own cache) on the same prompts as one batch: out tok/s."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.eos_token_id)
    with torch.inference_mode():
        model.generate(**inputs, **kwargs)  # warm-up
        sync(device)
        start = time.perf_counter()
        model.generate(**inputs, **kwargs)
        sync(device)
    seconds = time.perf_counter() - start
    del model
    return round(len(texts) * new_tokens / seconds, 1)


def ceiling(model_dir: Path, device: str, batches: list[int], prompt_tokens: int, steps: int = 32) -> list[dict]:
    """The bare model's decode step (transformers, sdpa, a StaticCache), eager and replayed from a CUDA graph,
    at each batch size: ms per step. The graph replays the same kernels without the host launching them, so eager
    ÷ graph is what launch overhead costs a step (what vLLM's CUDA graphs buy); the engine's own step is in
    ``engine``'s ITL."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    rows = []
    with torch.inference_mode():
        for b in batches:
            rows.append(_ceiling_row(model, device, b, prompt_tokens, steps))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _ceiling_row(model, device: str, batch: int, prompt_tokens: int, steps: int) -> dict:
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=prompt_tokens + 2 * steps + 8)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_tokens), device=device)
    model(input_ids=ids, past_key_values=cache, use_cache=True,
          cache_position=torch.arange(prompt_tokens, device=device))
    token = torch.zeros(batch, 1, dtype=torch.long, device=device)
    position = torch.tensor([prompt_tokens], device=device)

    def step():
        return model(input_ids=token, past_key_values=cache, use_cache=True, cache_position=position).logits

    def timed(run) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            run()
            position.add_(1)
        sync(device)
        return (time.perf_counter() - start) / steps * 1000

    row: dict = {"batch": batch}
    step()  # warm-up
    row["eager_ms"] = round(timed(step), 2)
    if device == "cuda":
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            row["graph_ms"] = round(timed(graph.replay), 2)
            row["eager_over_graph"] = round(row["eager_ms"] / row["graph_ms"], 1)
        except Exception as e:  # capture refuses host syncs: say which, keep the eager figure
            row["graph_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return row


async def _answers(engine: HFEngine, requests: list[EngineRequest], together: bool = False) -> list[str]:
    if together:
        return [r.text for r in await asyncio.gather(*(engine.generate(q) for q in requests))]
    return [(await engine.generate(q)).text for q in requests]


def paths(model_dir: Path, named: dict[str, Path], device: str, texts: list[str], n: int = 16) -> dict:
    """The engine's other device paths, in float32, each against adapters loaded at start answering one request
    at a time: an adapter hot-loaded at runtime (PEFT's injection for the first, ``transplant`` after), eviction
    and reload (one slot), steps run apart (``apart_step``), ``engine.adaptive``'s folded copy, and
    ``OfflineRunner.generate`` (``runtime eval``). Counts identical answers: random weights give near-flat logits,
    so a path that only rounds differently (the fold) can move a greedy token."""
    from runtime.config import AdaptiveConfig
    from runtime.engines.offline import OfflineRunner

    one, two = list(named)[:2]
    requests = [EngineRequest(f"p{i}", SamplingParams(max_new_tokens=n, ignore_eos=True), prompt=texts[i], adapter=a)
                for i, a in enumerate([one, one, two, None, one, two])]
    fp32 = dict(dtype="float32", device=device, max_batch_size=8)

    async def run(engine: HFEngine, go) -> list[str]:
        try:
            return await go(engine)
        finally:
            await engine.aclose()

    def same(texts_: list[str]) -> str:
        return f"{sum(a == b for a, b in zip(texts_, reference, strict=True))}/{len(reference)}"

    reference = asyncio.run(run(HFEngine(model_dir, {one: named[one], two: named[two]}, EngineConfig(**fp32)),
                                lambda e: _answers(e, requests)))
    out = {}

    async def hot(engine: HFEngine) -> list[str]:
        for name in (one, two):
            await engine.load_adapter(name, str(named[name]))
        return await _answers(engine, requests, together=True)

    out["hot_loaded"] = same(asyncio.run(run(HFEngine(model_dir, {}, EngineConfig(**fp32)), hot)))
    out["one_slot_evicting"] = same(asyncio.run(run(
        HFEngine(model_dir, {one: named[one], two: named[two]}, EngineConfig(**fp32, max_loras=1)),
        lambda e: _answers(e, requests))))
    apart = HFEngine(model_dir, {one: named[one], two: named[two]}, EngineConfig(**fp32))
    apart._packable = lambda: False
    out["steps_apart"] = same(asyncio.run(run(apart, lambda e: _answers(e, requests, together=True))))

    async def folded(engine: HFEngine) -> list[str]:
        for _ in range(2):
            await engine.generate(requests[0])
        while engine.placement_status()["mode"] != "folded":
            await asyncio.sleep(0.01)
        texts_ = await _answers(engine, requests, together=True)
        out["adaptive_status"] = {k: engine.placement_status()[k] for k in ("mode", "adapter", "folds")}
        return texts_

    settings = AdaptiveConfig(window=4, min_requests=2, memory_mb=65536)
    out["adaptive_folded"] = same(asyncio.run(run(
        HFEngine(model_dir, {one: named[one], two: named[two]}, EngineConfig(**fp32, adaptive=settings)), folded)))
    mine = [i for i, q in enumerate(requests) if q.adapter == one]
    with OfflineRunner(model_dir, named[one], dtype="float32", device=device, max_batch_size=8) as runner:
        got = runner.generate([texts[i] for i in mine], requests[0].params)
        out["runner_device"] = str(runner.device)
    out["eval_runner_generate"] = f"{sum(g.text == reference[i] for g, i in zip(got, mine, strict=True))}/{len(mine)}"
    print(json.dumps(out), flush=True)
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bandwidth(device: str, megabytes: int = 1024) -> float:
    """Device memory bandwidth in GB/s: a large copy, bytes read + written, best of 10."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(11):
        sync(device)
        start = time.perf_counter()
        target.copy_(source)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() / best / 1e9


async def mixed_vs_alone(engine: HFEngine, texts: list[str], names: list[str | None], new_tokens: int) -> dict:
    """Greedy answers of requests on different adapters decoding together vs each one alone."""
    together = await asyncio.gather(*(engine.generate(EngineRequest(
        f"m{i}", SamplingParams(max_new_tokens=new_tokens), prompt=t, adapter=n))
        for i, (t, n) in enumerate(zip(texts, names, strict=True))))
    alone = [await engine.generate(EngineRequest(f"a{i}", SamplingParams(max_new_tokens=new_tokens), prompt=t,
                                                 adapter=n)) for i, (t, n) in enumerate(zip(texts, names, strict=True))]
    same = sum(a.text == b.text for a, b in zip(together, alone, strict=True))
    prefix = [len(os.path.commonprefix([a.text, b.text])) / max(1, len(b.text))
              for a, b in zip(together, alone, strict=True)]
    return {"requests": len(texts), "identical": same, "mean_shared_prefix": round(statistics.mean(prefix), 3)}


def measure(model_dir: Path, named: dict[str, Path], args) -> dict:
    device, n = args.device, args.new_tokens
    config = EngineConfig(dtype="bfloat16", device=device, max_batch_size=max(args.concurrency), max_loras=4)
    engine = HFEngine(model_dir, named, config)
    tokenizer = engine.runner.tokenizer
    texts = prompts(tokenizer, max(32, 2 * max(args.concurrency)), args.prompt_tokens)
    weights = weight_bytes(engine.runner.model)  # the base weights a step reads (resident adapters left out)
    out: dict = {"weights_gb": round(weights / 1e9, 3), "engine": [], "static_generate": []}
    if not args.paths:
        asyncio.run(load(engine, texts[:4], 4, n))  # warm-up (kernels, allocator)
    for c in [] if args.paths else args.concurrency:
        batch = texts[:max(4, 2 * c)]
        out["engine"].append(asyncio.run(load(engine, batch, c, n)))
        print(json.dumps(out["engine"][-1]), flush=True)
    if args.paths:
        asyncio.run(engine.aclose())
        del engine
        return {"paths": paths(model_dir, named, device, texts)}
    if args.ceiling_only:  # the engine's steps beside the bare model's, eager and graphed, on one machine
        asyncio.run(engine.aclose())
        del engine
        out["bare_step_ceiling"] = ceiling(model_dir, device, args.concurrency, args.prompt_tokens)
        return out
    names = list(named)
    rr = [names[i % len(names)] for i in range(32)]
    out["experts_c8"] = asyncio.run(load(engine, texts[:32], 8, n, rr))
    out["base_c8"] = asyncio.run(load(engine, texts[:32], 8, n))
    out["experts_over_base_c8"] = round(out["experts_c8"]["out_tok_s"] / out["base_c8"]["out_tok_s"], 2)
    mix = [*names, None, *names[:3]]
    out["mixed_vs_alone_bf16"] = asyncio.run(mixed_vs_alone(engine, texts[:len(mix)], mix, n))
    if device == "cuda":
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    asyncio.run(engine.aclose())
    del engine
    one = next(r for r in out["engine"] if r["concurrency"] == 1)
    bw = bandwidth(device)
    out["bandwidth_gb_s"] = round(bw)
    out["decode_b1_share_of_bandwidth_limit"] = round(weights / bw / 1e9 / (one["itl_p50_ms"] / 1000), 3)
    for c in args.concurrency:
        out["static_generate"].append({"concurrency": c, "out_tok_s": static_generate(
            model_dir, texts[:c], n, device)})
    out["bare_step_ceiling"] = ceiling(model_dir, device, args.concurrency, args.prompt_tokens)
    fp32 = HFEngine(model_dir, named, EngineConfig(dtype="float32", device=device, max_batch_size=8, max_loras=4))
    out["mixed_vs_alone_fp32"] = asyncio.run(mixed_vs_alone(fp32, texts[:len(mix)], mix, n))
    asyncio.run(fp32.aclose())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="one folder per model: config.json (+ tokenizer)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--layers", type=int, default=None, help="cut each model to this many layers (smoke test)")
    parser.add_argument("--ceiling-only", action="store_true",
                        help="only the engine's loads and the bare model's eager vs CUDA-graph step")
    parser.add_argument("--paths", action="store_true",
                        help="only the other device paths (hot-load, eviction, steps apart, adaptive, eval), fp32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    folders = sorted(p for p in args.models.iterdir() if (p / "config.json").is_file())
    tokenizer_dir = next(p for p in folders if (p / "tokenizer.json").is_file())
    report: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                                "cpu": platform.processor() or platform.machine()},
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "models": {}}
    with tempfile.TemporaryDirectory() as work:
        for folder in folders:
            start = time.perf_counter()
            model_dir = build(folder, tokenizer_dir, Path(work) / folder.name, args.layers, args.device)
            named = {} if args.ceiling_only else adapters(model_dir, Path(work) / f"{folder.name}-adapters",
                                                           args.device)  # ceiling: the base engine vs bare model
            print(f"{folder.name}: built in {time.perf_counter() - start:.0f} s", flush=True)
            report["models"][folder.name] = measure(model_dir, named, args)
            print(json.dumps({folder.name: report["models"][folder.name]}), flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
