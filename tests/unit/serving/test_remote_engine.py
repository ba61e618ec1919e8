"""The remote engine against real HTTP upstreams (fake-engine servers on 127.0.0.1): rotation, failover,
health checks, streaming, and client errors passed through."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from serving_fakes import make_client

from runtime.config import EngineConfig
from runtime.engines.base import EngineRequest
from runtime.engines.hf import SamplingParams
from runtime.engines.remote import RemoteEngine
from runtime.errors import ModelNotFoundError


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    def __init__(self) -> None:
        self.port = _port()
        client, self.engines = make_client()
        self.server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Upstream:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def served(self) -> int:
        return sum(len(e.calls) for e in self.engines.values())


def _req(model: str = "generation", n: int = 4) -> EngineRequest:
    return EngineRequest("r", SamplingParams(max_new_tokens=n), messages=[{"role": "user", "content": "hi"}],
                         adapter=model)


def _engine(urls: list[str], retries: int = 2) -> RemoteEngine:
    cfg = EngineConfig(kind="remote", upstreams=urls, retries=retries, timeout_s=5)
    return RemoteEngine(Path("/m/generation"), {}, cfg, cooldown_s=60, backoff_s=0.01)


def test_requests_rotate_and_a_dead_upstream_leaves_rotation():
    with Upstream() as a, Upstream() as b:
        dead = f"http://127.0.0.1:{_port()}"

        async def run():
            engine = _engine([a.url, dead, b.url])
            results = [await engine.generate(_req()) for _ in range(6)]
            in_service = engine.in_service()
            await engine.aclose()
            return results, in_service, engine

        results, in_service, engine = asyncio.run(run())
    assert len({r.text for r in results}) == 1 and results[0].completion_tokens == 4
    assert a.served() > 0 and b.served() > 0  # both healthy upstreams took work
    assert dead not in in_service and engine.failures[dead] == 1  # out after one failure, not retried every time


def test_health_check_brings_an_upstream_back():
    with Upstream() as a:
        async def run():
            engine = _engine([a.url])
            engine._mark_down(a.url, "test")
            assert engine.in_service() == []
            healthy = await engine.health()
            await engine.aclose()
            return healthy, engine.in_service()

        healthy, live = asyncio.run(run())
    assert healthy and live == [a.url]


def test_streaming_through_the_upstream_matches_generate():
    with Upstream() as a:
        async def run():
            engine = _engine([a.url])
            full = await engine.generate(_req(n=5))
            deltas = [d async for d in engine.stream(_req(n=5))]
            await engine.aclose()
            return full, deltas

        full, deltas = asyncio.run(run())
    assert "".join(d.text for d in deltas) == full.text
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 5


def test_client_errors_are_not_retried():
    with Upstream() as a:
        async def run():
            engine = _engine([a.url])
            with pytest.raises(ModelNotFoundError, match="unknown model"):
                await engine.generate(_req(model="nope"))
            await engine.aclose()
            return engine.failures[a.url]

        assert asyncio.run(run()) == 0
