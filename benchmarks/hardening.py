"""The red team's checks of `runtime serve`, re-run as one script: fuzzed requests over real HTTP (status codes,
5xx count), concurrent streams for a while (requests lost, RSS drift of the server), and how long /health stalls
while a huge prompt arrives (chunked, over the body limit, and just under it on a real model).

    .venv/bin/python benchmarks/hardening.py --model qwen2.5-coder-0.5b --cases 600 --streams 64 --seconds 60
    .venv/bin/python benchmarks/hardening.py --src /tmp/old-checkout ...   # the same checks against another checkout

Prints one JSON object. The fuzzed bodies come from the hypothesis strategies of tests/unit/serving/test_fuzz_api.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "unit" / "serving")]

from runtime.bench.launch import ServerProcess  # noqa: E402


def serve(src: Path, args: list[str]) -> ServerProcess:
    """`runtime serve` with the code of checkout ``src`` (PYTHONPATH comes before the venv's editable install)."""
    return ServerProcess(args, env={"PYTHONPATH": str(src)}, startup_timeout_s=300)


def fuzz(url: str, cases: int) -> dict:
    from hypothesis import strategies as st
    from test_fuzz_api import CHAT, COMPLETION, LORA, RAW

    paths = {"/chat/completions": CHAT, "/completions": COMPLETION, "/load_lora_adapter": LORA,
             "/unload_lora_adapter": LORA}
    codes: collections.Counter = collections.Counter()
    bad_shape = 0
    with httpx.Client(timeout=30) as client:  # one keep-alive connection: a reset would show as an error
        for i in range(cases):
            path = list(paths)[i % len(paths)]
            if i % 5 == 4:
                r = client.post(url + path, content=RAW.example(), headers={"content-type": "application/json"})
            else:
                r = client.post(url + path, json=st.one_of(paths[path]).example())
            codes[r.status_code] += 1
            if r.status_code >= 400:
                try:
                    bad_shape += set(r.json()["error"]) != {"message", "type", "param", "code"}
                except (ValueError, KeyError, TypeError):
                    bad_shape += 1
    return {"cases": cases, "status_codes": dict(sorted(codes.items())),
            "server_errors": sum(n for c, n in codes.items() if c >= 500), "not_openai_shape": bad_shape}


async def streams(url: str, n: int, seconds: float, pid: int) -> dict:
    body = {"model": "generation", "messages": [{"role": "user", "content": "def add(a, b):"}], "max_tokens": 16,
            "stream": True}
    proc = psutil.Process(pid)
    rss = lambda: sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20  # noqa: E731
    start_rss, done, lost = rss(), 0, 0
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, lost
        while time.monotonic() < deadline:
            try:
                async with client.stream("POST", url + "/chat/completions", json=body) as r:
                    lines = [line async for line in r.aiter_lines() if line]
                ok = r.status_code == 200 and lines[-1] == "data: [DONE]"
            except httpx.HTTPError:
                ok = False
            done, lost = done + ok, lost + (not ok)

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as client:
        await asyncio.gather(*(worker(client) for _ in range(n)))
    return {"streams": n, "seconds": seconds, "completed": done, "lost": lost, "rss_start_mb": round(start_rss),
            "rss_end_mb": round(rss()), "rss_drift_mb": round(rss() - start_rss)}


async def health_stall(base: str, body: bytes, chunked: bool) -> dict:
    """The longest /health answer while ``body`` is sent to /v1/completions, and that request's status."""
    worst = 0.0

    async def poll(client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        nonlocal worst
        while not stop.is_set():
            t = time.perf_counter()
            await client.get(base + "/health")
            worst = max(worst, time.perf_counter() - t)
            await asyncio.sleep(0.02)

    async def chunks():
        for i in range(0, len(body), 1 << 16):
            yield body[i:i + (1 << 16)]

    async with httpx.AsyncClient(timeout=300) as client:
        stop = asyncio.Event()
        poller = asyncio.create_task(poll(client, stop))
        t = time.perf_counter()
        r = await client.post(base + "/v1/completions", content=chunks() if chunked else body,
                              headers={"content-type": "application/json"})
        took = time.perf_counter() - t
        stop.set()
        await poller
    return {"bytes": len(body), "chunked": chunked, "status": r.status_code, "answer_s": round(took, 2),
            "worst_health_s": round(worst, 3)}


def prompt_body(size: int) -> bytes:
    return json.dumps({"model": "generation", "prompt": "x = 1\n" * (size // 7), "max_tokens": 4}).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--src", type=Path, default=ROOT, help="checkout whose `runtime serve` is tested")
    ap.add_argument("--cases", type=int, default=600)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    a = ap.parse_args()
    out: dict = {"src": str(a.src), "machine": f"{os.cpu_count()} CPUs"}
    with serve(a.src, ["--model", a.model, "--engine", "fake"]) as server:
        out["fuzz"] = fuzz(server.url, a.cases)
        out["load"] = asyncio.run(streams(server.url, a.streams, a.seconds, server.process.pid))
    with serve(a.src, ["--model", a.model, "--engine", "hf"]) as server:
        base = server.url.removesuffix("/v1")
        out["huge_bodies"] = [asyncio.run(health_stall(base, prompt_body(20 << 20), chunked=True)),
                              asyncio.run(health_stall(base, prompt_body(900 << 10), chunked=False))]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
