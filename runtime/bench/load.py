"""Load generator: streamed chat requests against an OpenAI-compatible server, at a fixed concurrency or a
Poisson request rate, reported with the field names of `vllm bench serve` (TTFT, TPOT, ITL, E2EL in ms)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from runtime.api_types import route_from_headers


@dataclass(frozen=True)
class RequestSpec:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    fixed_length: bool = True  # decode exactly max_tokens (vLLM's ignore_eos): every option does the same work


@dataclass
class RequestRecord:
    ok: bool
    start: float
    ttft: float | None = None  # seconds to the first content chunk; None for an answer with no text
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)  # gaps between content chunks
    output_tokens: int = 0
    max_tokens: int | None = None  # the length a fixed-length request must reach (None: natural stopping)
    route: dict[str, str] = field(default_factory=dict)
    error: str = ""


def workload(n: int, max_tokens: int, model_for=lambda task: task, offset: int = 0,
             fixed_length: bool = True) -> list[RequestSpec]:
    """An agent-like mix: the four tasks in turn, real test-split items through the task prompts (items from
    ``offset`` on, so a warm-up can use others). With ``fixed_length`` every answer is exactly ``max_tokens`` long,
    so a model that stops early does not look fast."""
    from runtime.config import TASKS, TasksConfig, configs_dir, load_config
    from runtime.tasks import load_items
    from runtime.tasks.prompts import messages_for

    tasks = load_config(configs_dir() / "tasks.yaml", TasksConfig)
    per_task = {t: load_items(t, "test", offset + n)[offset:] for t in TASKS}
    specs = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        item = per_task[task][i // len(TASKS)]
        specs.append(RequestSpec(model_for(task), messages_for(tasks, task, item), max_tokens, fixed_length))
    return specs


async def one_request(client: httpx.AsyncClient, url: str, spec: RequestSpec, headers: dict[str, str]) -> RequestRecord:
    body = {"model": spec.model, "messages": spec.messages, "max_tokens": spec.max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if spec.fixed_length:
        body |= {"ignore_eos": True, "min_tokens": spec.max_tokens}
    start = time.perf_counter()
    record = RequestRecord(ok=False, start=start, max_tokens=spec.max_tokens if spec.fixed_length else None)
    last = None
    try:
        async with client.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as r:
            record.route = route_from_headers(r.headers)
            if r.status_code != 200:
                record.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return record
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    record.error = chunk["error"].get("message", "stream error")
                    return record
                if chunk.get("usage"):
                    record.output_tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices") or []:
                    if choice.get("delta", {}).get("content"):
                        now = time.perf_counter()
                        if last is None:
                            record.ttft = now - start
                        else:
                            record.itl.append(now - last)
                        last = now
    except httpx.HTTPError as e:
        record.error = repr(e)
        return record
    record.e2el = time.perf_counter() - start
    record.ok = True
    return record


async def run_load(url: str, specs: list[RequestSpec], concurrency: int | None = None, rate: float | None = None,
                   api_key: str | None = None, seed: int = 0, timeout_s: float = 600) -> dict:
    """Send every request once: ``concurrency`` at a time, or as Poisson arrivals at ``rate`` per second."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max(concurrency or 64, 8))
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()
        if rate:
            rng = random.Random(seed)

            async def delayed(spec: RequestSpec, at: float) -> RequestRecord:
                await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
                return await one_request(client, url, spec, headers)

            arrivals, t = [], 0.0
            for _ in specs:
                t += rng.expovariate(rate)
                arrivals.append(t)
            records = await asyncio.gather(*(delayed(s, a) for s, a in zip(specs, arrivals, strict=True)))
        else:
            gate = asyncio.Semaphore(concurrency or 1)

            async def gated(spec: RequestSpec) -> RequestRecord:
                async with gate:
                    return await one_request(client, url, spec, headers)

            records = await asyncio.gather(*(gated(s) for s in specs))
        duration = time.perf_counter() - start
    return summarize(list(records), duration) | {"concurrency": concurrency, "request_rate": rate}


def _stats(name: str, values: list[float]) -> dict[str, float]:
    ms = np.array(values) * 1000 if values else np.array([0.0])
    return {f"mean_{name}_ms": float(ms.mean()), f"median_{name}_ms": float(np.median(ms)),
            f"p90_{name}_ms": float(np.percentile(ms, 90)), f"p99_{name}_ms": float(np.percentile(ms, 99))}


def summarize(records: list[RequestRecord], duration: float) -> dict:
    done = [r for r in records if r.ok]
    tokens = sum(r.output_tokens for r in done)
    tpot = [(r.e2el - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1 and r.ttft is not None]
    out = {"completed": len(done), "failed": len(records) - len(done), "duration_s": duration,
           "empty_answers": sum(r.ttft is None for r in done),  # completed without a content chunk: no TTFT
           # fixed-length requests that came back shorter: the engine did not honour ignore_eos (0 where it did)
           "short_answers": sum(r.max_tokens is not None and r.output_tokens < r.max_tokens for r in done),
           "total_output_tokens": tokens, "request_throughput": len(done) / duration if duration else 0.0,
           "output_throughput": tokens / duration if duration else 0.0,
           "errors": sorted({r.error for r in records if r.error})[:5]}
    for name, values in (("ttft", [r.ttft for r in done if r.ttft is not None]), ("tpot", tpot),
                         ("itl", [g for r in done for g in r.itl]), ("e2el", [r.e2el for r in done])):
        out |= _stats(name, values)
    return out
