"""Load generator: streamed chat requests against an OpenAI-compatible server, at a fixed concurrency or a
Poisson request rate, reported with the field names of `vllm bench serve` (TTFT, TPOT, ITL, E2EL in ms); each
level carries what else ran on the machine meanwhile (``MachineLoadMeter``: speed measured on cores something
else was using is not the engine's speed)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

from runtime.api_types import route_from_headers
from runtime.bench.config import LOAD_ITEMS_FROM
from runtime.config import TASKS
from runtime.process import group_members

PROC = Path("/proc")
WORKLOAD = 2  # bump when what the load phase asks changes (2: no prompt twice, none the accuracy phase asked):
# the bench's measured phases key on it


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
    from runtime.config import TasksConfig, configs_dir, load_config
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



def run_levels(url: str, cfg, progress, label: str, server_pid: int | None = None) -> dict:
    """The bench's load phase (``cfg``: its ``load`` config): a warm-up, each fixed concurrency, then the Poisson
    rate; each level's stats carry ``machine_load``, what else used the cores meanwhile (ours: the server's
    process tree and this process's)."""
    levels = {str(c): cfg.requests_at(c) for c in cfg.concurrency}
    progress.phase(f"{label} load", cfg.warmup + sum(levels.values()) + (cfg.rate_requests if cfg.rate else 0))
    taken = LOAD_ITEMS_FROM

    def specs(n: int) -> list[RequestSpec]:
        """The next ``n`` requests, on items no earlier request of this server asked: a server that caches
        prompts (vLLM's prefix cache, on by default) must not answer a level from an earlier level's prompts,
        which the hf engine would compute again (the c=8 level reused c=4's 12 prompts before WORKLOAD 2)."""
        nonlocal taken
        batch = workload(n, cfg.max_tokens, offset=taken, fixed_length=cfg.fixed_length)
        taken += -(-n // len(TASKS))  # items per task that n requests use
        return batch

    def timed(requests: list[RequestSpec], **how) -> dict:
        with MachineLoadMeter.around(server_pid) as meter:
            stats = asyncio.run(run_load(url, requests, **how))
        progress.advance(len(requests))
        return stats | {"machine_load": meter.result}

    if cfg.warmup:
        asyncio.run(run_load(url, specs(cfg.warmup), concurrency=cfg.warmup))
        progress.advance(cfg.warmup)
    out = {str(c): timed(specs(levels[str(c)]), concurrency=c) for c in cfg.concurrency}
    if cfg.rate:
        out[f"poisson-{cfg.rate:g}"] = timed(specs(cfg.rate_requests), rate=cfg.rate)
    return out

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


# ----------------------------------------------------------------------------------- the machine meanwhile
def read_cpu_ticks(text: str) -> tuple[int, int]:
    """(all, busy) clock ticks of every core together from /proc/stat's text: busy is all but idle and iowait
    (steal counts as busy: another guest had the core). guest and guest_nice are already inside user and nice."""
    fields = [int(v) for v in text.splitlines()[0].split()[1:9]]  # the aggregate "cpu" line
    total = sum(fields)
    return total, total - fields[3] - fields[4]


def read_process_ticks(stat: str) -> tuple[int, int]:
    """(start time, CPU ticks) from /proc/PID/stat's text: utime + stime + cutime + cstime, every thread; children
    a process reaped are in its cutime/cstime, so work of a short-lived child is still its parent's."""
    fields = stat[stat.rindex(")") + 2:].split()  # fields from 3 (state) on; comm may hold spaces
    return int(fields[19]), sum(int(v) for v in fields[11:15])


def tree_pids(roots: Iterable[int], groups: Iterable[int] = ()) -> set[int]:
    """``roots`` and their descendants, and the members of the process groups ``groups`` (a server started in its
    own session: engine workers that outlived their parent stay in its group)."""
    pids: set[int] = set()
    for root in roots:
        try:
            pids |= {root, *(c.pid for c in psutil.Process(root).children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    for group in groups:
        pids |= set(group_members(group))
    return pids


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    total: int  # ticks of every core
    busy: int
    own: dict[tuple[int, int], int]  # (pid, start time) -> ticks of the processes we account for
    load1: float


def snapshot(roots: Iterable[int], proc: Path = PROC, groups: Iterable[int] = ()) -> CpuSnapshot | None:
    """The machine's and our processes' CPU ticks now; None where /proc/stat cannot be read (not Linux)."""
    try:
        total, busy = read_cpu_ticks((proc / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None
    own = {}
    for pid in tree_pids(roots, groups):
        try:
            start, ticks = read_process_ticks((proc / str(pid) / "stat").read_text())
        except (OSError, ValueError, IndexError):  # it exited while we looked
            continue
        own[(pid, start)] = ticks
    return CpuSnapshot(time.monotonic(), total, busy, own, os.getloadavg()[0])


def machine_load(before: CpuSnapshot, after: CpuSnapshot, cores: int | None = None) -> dict:
    """What ran between two snapshots, as shares of all cores' time (0-1): ours (the served process tree and the
    bench) and everyone else's. A process of ours that exited without being reaped by one of ours is lost from
    ``own`` (its ticks then count as others'); one reaped by ours is in its parent's cutime."""
    total = after.total - before.total
    own = sum(after.own.values()) - sum(before.own.values())  # a reaped child: its parent's cutime minus its own
    own = max(0, min(own, after.busy - before.busy))
    other = max(0, after.busy - before.busy - own)
    return {"wall_s": round(after.at - before.at, 2), "cores": cores or os.cpu_count() or 1,
            "load1_start": round(before.load1, 2), "load1_end": round(after.load1, 2),
            "other_cpu_share": round(other / total, 3) if total > 0 else 0.0,
            "own_cpu_share": round(own / total, 3) if total > 0 else 0.0}


class MachineLoadMeter:
    """``with MachineLoadMeter.around(server_pid) as m: ...`` then ``m.result``: the 1-min load average at the
    start and the end and the CPU share of processes outside ``roots``' trees and ``groups`` meanwhile (None off
    Linux)."""

    def __init__(self, roots: Iterable[int], proc: Path = PROC, groups: Iterable[int] = ()) -> None:
        self.roots, self.groups = list(roots), list(groups)
        self.proc = proc
        self.result: dict | None = None
        self._before: CpuSnapshot | None = None

    @classmethod
    def around(cls, server_pid: int | None) -> MachineLoadMeter:
        """Ours: this process's tree (the server is a child) and the server's process group."""
        return cls([os.getpid(), *([server_pid] if server_pid else [])], groups=[server_pid] if server_pid else [])

    def __enter__(self) -> MachineLoadMeter:
        self._before = snapshot(self.roots, self.proc, self.groups)
        return self

    def __exit__(self, *exc) -> None:
        after = snapshot(self.roots, self.proc, self.groups)
        if self._before is not None and after is not None:
            self.result = machine_load(self._before, after)
