"""The remote engine against real HTTP upstreams (fake-engine servers on 127.0.0.1): rotation, failover,
health checks, streaming, and client errors passed through."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
import uvicorn
from serving_fakes import Upstream

from runtime.config import EngineConfig
from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.remote import RemoteEngine
from runtime.errors import EngineUnavailableError, ModelNotFoundError
from runtime.process import free_port


def _req(model: str = "generation", n: int = 4) -> EngineRequest:
    return EngineRequest("r", SamplingParams(max_new_tokens=n), messages=[{"role": "user", "content": "hi"}],
                         adapter=model)


def _engine(urls: list[str], retries: int = 2) -> RemoteEngine:
    cfg = EngineConfig(kind="remote", upstreams=urls, retries=retries, timeout_s=5)
    return RemoteEngine(Path("/m/generation"), {}, cfg, cooldown_s=60, backoff_s=0.01)


def test_requests_rotate_and_a_dead_upstream_leaves_rotation():
    with Upstream() as a, Upstream() as b:
        dead = f"http://127.0.0.1:{free_port()}"

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


def test_min_tokens_and_ignore_eos_are_passed_upstream_only_when_used():
    with Upstream() as a:
        async def run():
            engine = _engine([a.url])
            await engine.generate(EngineRequest("r", SamplingParams(max_new_tokens=4, min_tokens=2, ignore_eos=True),
                                                prompt="x", adapter="merged"))
            await engine.generate(_req(n=3))
            await engine.aclose()

        asyncio.run(run())
        fixed, plain = (a.engines[m].calls[-1].params for m in ("/models/merged", "/models/base"))
    assert (fixed.min_tokens, fixed.ignore_eos) == (2, True) and (plain.min_tokens, plain.ignore_eos) == (0, False)


def test_client_errors_are_not_retried():
    with Upstream() as a:
        async def run():
            engine = _engine([a.url])
            with pytest.raises(ModelNotFoundError, match="unknown model"):
                await engine.generate(_req(model="nope"))
            await engine.aclose()
            return engine.failures[a.url]

        assert asyncio.run(run()) == 0


class Failing503(Upstream):
    """An upstream that answers 503 to everything (an overloaded or restarting server)."""

    def __init__(self) -> None:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def unavailable(request):
            return JSONResponse({"error": {"message": "overloaded"}}, 503)

        self.port = free_port()
        app = Starlette(routes=[Route("/{path:path}", unavailable, methods=["GET", "POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)


@pytest.mark.parametrize("failure", ["refused", "503"])
def test_a_stream_that_fails_before_its_first_byte_is_retried_on_the_next_upstream(failure: str):
    with Upstream() as good, Failing503() as overloaded:
        bad = f"http://127.0.0.1:{free_port()}" if failure == "refused" else overloaded.url

        async def run():
            engine = _engine([good.url, bad], retries=1)  # the first pick is the second upstream: the bad one
            streams = [[d async for d in engine.stream(_req(n=3))] for _ in range(3)]
            await engine.aclose()
            return streams, engine

        streams, engine = asyncio.run(run())
    assert all("".join(d.text for d in s) and s[-1].completion_tokens == 3 for s in streams)
    assert engine.failures[bad] == 1 and engine.failures[good.url] == 0
    assert good.served() == 3


def test_a_stream_fails_with_a_clear_error_when_every_upstream_refuses():
    dead = f"http://127.0.0.1:{free_port()}"

    async def run():
        engine = _engine([dead], retries=0)
        try:
            with pytest.raises(EngineUnavailableError, match="every upstream attempt to open the stream failed"):
                [d async for d in engine.stream(_req())]
        finally:
            await engine.aclose()

    asyncio.run(run())


def test_the_api_key_is_sent_as_a_bearer_token_over_the_given_transport():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:  # generate streams from the upstream: SSE
        seen.append(request)
        chunk = {"choices": [{"text": "ok", "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n",
                              headers={"content-type": "text/event-stream"})

    async def run():
        engine = RemoteEngine(Path("/m/base"), {}, EngineConfig(kind="remote", upstreams=["http://vllm"]),
                              api_key="k123", transport=httpx.MockTransport(answer))
        result = await engine.generate(EngineRequest("r", SamplingParams(max_new_tokens=1), prompt="x"))
        await engine.aclose()
        return result

    assert asyncio.run(run()).text == "ok"
    assert seen[0].headers["authorization"] == "Bearer k123" and seen[0].url.path == "/v1/completions"


def test_the_timeout_bounds_the_silence_between_tokens_not_the_answers_length():
    """A long answer that keeps streaming outlives timeout_s; an upstream that goes quiet for longer does not."""
    from runtime.errors import UpstreamTimeoutError

    async def ask(upstream: Upstream, n: int) -> object:
        cfg = EngineConfig(kind="remote", upstreams=[upstream.url], retries=0, timeout_s=1.0)
        engine = RemoteEngine(Path("/m/generation"), {}, cfg, cooldown_s=60, backoff_s=0.01)
        try:
            return await engine.generate(_req(n=n))
        finally:
            await engine.aclose()

    with Upstream(delay_s=0.25) as steady:  # 10 tokens: 2.5 s in all, 0.25 s apart
        result = asyncio.run(ask(steady, 10))
    assert result.completion_tokens == 10
    with Upstream(delay_s=2.0) as stalled, pytest.raises(UpstreamTimeoutError, match="sent nothing for 1 s"):
        asyncio.run(ask(stalled, 2))


def test_an_upstream_that_ignores_stream_and_answers_in_one_json_still_answers():
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"message": {"content": "whole"}, "finish_reason": "length"}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

    async def run():
        engine = RemoteEngine(Path("/m/base"), {}, EngineConfig(kind="remote", upstreams=["http://up"]),
                              transport=httpx.MockTransport(answer))
        try:
            return await engine.generate(_req(n=2)), [d async for d in engine.stream(_req(n=2))]
        finally:
            await engine.aclose()

    result, deltas = asyncio.run(run())
    assert (result.text, result.finish_reason, result.completion_tokens) == ("whole", "length", 2)
    assert [d.text for d in deltas] == ["whole", ""] and deltas[-1].prompt_tokens == 3
