"""The serving layer: a parsed request -> route -> fallbacks -> engine -> response or event stream.

No FastAPI here (the shape of vLLM's ``OpenAIServing*`` classes): ``server.py`` holds thin typed routes over
:class:`OpenAIServing`, which tests drive directly. Runtime-loaded adapters live in :class:`AdapterRegistry`,
which swaps in a new routing table on each change; the plan's own table is never mutated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel

from runtime import api_types as wire
from runtime.config import TASKS
from runtime.deploy import ServingPlan
from runtime.engines.base import Engine, EngineRequest, EngineResult, SamplingParams, StreamDelta, build_engine
from runtime.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    EngineUnavailableError,
    MixmergeError,
    ModelNotFoundError,
    UpstreamTimeoutError,
)
from runtime.metrics import ServerMetrics
from runtime.router import Route, RoutingTable, Target, fallback_routes, route

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 256
Endpoint = str  # "chat" | "completions"


@dataclass
class ServerSettings:
    api_key: str | None = None  # require `Authorization: Bearer KEY` when set
    max_body_bytes: int = 1 << 20  # counted on the bytes read, chunked bodies included (413 beyond)
    request_timeout_s: float = 300.0
    enable_lora_updates: bool = False  # POST /v1/load_lora_adapter and /v1/unload_lora_adapter
    lora_dirs: list[Path] = field(default_factory=list)  # where runtime-loaded adapters may come from


@dataclass(frozen=True)
class Served:
    """What a request got: the route that answered and either a response body or an SSE event stream."""

    route: Route
    body: BaseModel | None = None
    events: AsyncIterator[str] | None = None


def build_engines(plan: ServingPlan, kind: str | None = None) -> dict[str, Engine]:
    """Start one engine per model the plan serves (``kind`` overrides every deployment's engine)."""
    return {key: build_engine(kind or spec.config.kind, spec.model_path, spec.adapters, spec.config)
            for key, spec in plan.engines.items()}


class AdapterRegistry:
    """The adapters requests may name: the deployment's own (fixed) and those loaded at runtime."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.own = frozenset(table.adapters)
        self.reserved = {"auto", *TASKS, *table.deployments}

    def check_new(self, name: str) -> None:
        if name in self.reserved:
            raise BadRequestError(f"lora_name '{name}' is a task or deployment name and could never be routed to",
                                  fix="choose another name", param="lora_name")
        if name in self.own:
            raise ConflictError(f"adapter '{name}' belongs to the deployment", fix="load under another name",
                                param="lora_name")

    def add(self, name: str, target: Target) -> None:
        self.table = replace(self.table, adapters={**self.table.adapters, name: target})

    def remove(self, name: str) -> Target:
        if name in self.own:
            raise ConflictError(f"adapter '{name}' is one of the deployment's experts and cannot be unloaded",
                                fix="unload only adapters loaded with POST /v1/load_lora_adapter", param="lora_name")
        target = self.table.adapters.get(name)
        if target is None:
            raise ModelNotFoundError(f"adapter '{name}' is not loaded", fix="see GET /v1/models", param="lora_name")
        self.table = replace(self.table, adapters={k: v for k, v in self.table.adapters.items() if k != name})
        return target


class OpenAIServing:
    def __init__(self, plan: ServingPlan, engines: dict[str, Engine], settings: ServerSettings,
                 metrics: ServerMetrics) -> None:
        self.plan, self.engines, self.settings, self.metrics = plan, engines, settings, metrics
        self.registry = AdapterRegistry(plan.table)

    # -------------------------------------------------------------------------------------------- requests
    async def chat(self, body: wire.ChatCompletionRequest) -> Served:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        user_text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return await self._serve("chat", body, user_text, lambda r: EngineRequest(
            _rid(), sampling_params(body), messages=messages, adapter=r.adapter))

    async def completions(self, body: wire.CompletionRequest) -> Served:
        return await self._serve("completions", body, body.text, lambda r: EngineRequest(
            _rid(), sampling_params(body), prompt=body.text, adapter=r.adapter))

    async def _serve(self, endpoint: Endpoint, body: wire.SamplingFields, text: str,
                     make: Callable[[Route], EngineRequest]) -> Served:
        first = route(self.registry.table, body.model, text)
        routes = [first, *fallback_routes(self.registry.table, first)]
        if body.stream:
            return await self._stream(endpoint, body, routes, make)
        start = time.perf_counter()
        result, used = await self._with_fallbacks(routes, lambda r: self._timed(self.engines[r.engine].generate(
            make(r))))
        self._count(endpoint, used, result, time.perf_counter() - start)
        return Served(used, response_body(endpoint, body.model, result))

    async def _timed(self, coro: Awaitable):
        try:
            return await asyncio.wait_for(coro, self.settings.request_timeout_s)
        except TimeoutError as e:
            raise UpstreamTimeoutError(f"generation took longer than {self.settings.request_timeout_s:.0f} s",
                                       fix="lower max_tokens or raise the server's timeout") from e

    async def _with_fallbacks(self, routes: list[Route], call: Callable[[Route], Awaitable]):
        last: Exception | None = None
        for i, r in enumerate(routes):
            if r.engine not in self.engines:
                continue
            try:
                return await call(r), r
            except (BadRequestError, AuthenticationError, UpstreamTimeoutError):
                raise  # the request itself is at fault, or it already took its time: no fallback
            except Exception as e:  # an engine or adapter failure: try the next route
                last = e
                if i + 1 < len(routes):
                    self.metrics.fallbacks.labels(r.deployment, routes[i + 1].deployment).inc()
                    log.warning("route %s failed (%s); falling back to %s", r, e, routes[i + 1].deployment)
        if isinstance(last, MixmergeError):
            raise last
        raise EngineUnavailableError(f"every route failed; last error: {last}", fix="check GET /health")

    async def _stream(self, endpoint: Endpoint, body: wire.SamplingFields, routes: list[Route],
                      make: Callable[[Route], EngineRequest]) -> Served:
        start = time.perf_counter()

        async def first_delta(r: Route):
            """Start the stream; an error before the first token still gets a status code (and a fallback)."""
            stream = self.engines[r.engine].stream(make(r))
            try:
                return stream, await self._timed(anext(stream))
            except StopAsyncIteration:
                return stream, None

        (stream, first), used = await self._with_fallbacks(routes, first_delta)
        self.metrics.ttft.labels(used.deployment, used.adapter or "").observe(time.perf_counter() - start)
        return Served(used, events=self._sse(endpoint, body, used, first, stream, start))

    async def _sse(self, endpoint: Endpoint, body: wire.SamplingFields, used: Route, first: StreamDelta | None,
                   stream: AsyncIterator[StreamDelta], start: float) -> AsyncIterator[str]:
        cid, created = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        chunk = wire.chat_chunk if endpoint == "chat" else wire.completion_chunk
        last = None
        if endpoint == "chat":
            yield _event(chunk(cid, body.model, created, {"role": "assistant", "content": ""}, None))
        try:
            async for delta in _chain([first] if first is not None else [], stream):
                last = delta
                piece = {"content": delta.text} if endpoint == "chat" else delta.text
                yield _event(chunk(cid, body.model, created, piece, delta.finish_reason))
        except MixmergeError as e:
            yield _event(e.to_openai())
        except Exception as e:  # never a stream cut without a word: an error event, then [DONE]
            log.exception("stream of %s failed", used.deployment)
            yield _event(MixmergeError(f"generation failed: {type(e).__name__}: {e}").to_openai())
        if body.include_usage and last is not None:
            yield _event(chunk(cid, body.model, created, {} if endpoint == "chat" else "", None, _usage(last),
                               with_choice=False))
        yield "data: [DONE]\n\n"
        if last is not None:
            self._count(endpoint, used, last, time.perf_counter() - start)

    def _count(self, endpoint: Endpoint, used: Route, result: EngineResult | StreamDelta, seconds: float) -> None:
        adapter, m = used.adapter or "", self.metrics
        m.requests.labels(endpoint, used.deployment, adapter, "200").inc()
        m.latency.labels(endpoint, used.deployment, adapter).observe(seconds)
        m.tokens.labels("prompt", used.deployment, adapter).inc(result.prompt_tokens)
        m.tokens.labels("completion", used.deployment, adapter).inc(result.completion_tokens)
        m.routes.labels(used.deployment, used.task or "", adapter).inc()

    # -------------------------------------------------------------------------------------------- adapters
    async def load_adapter(self, body: wire.LoadLoraAdapterRequest) -> dict[str, object]:
        self._check_lora_updates()
        self.registry.check_new(body.lora_name)
        path = Path(body.lora_path).expanduser().resolve()
        if not any(path.is_relative_to(d.resolve()) for d in self.settings.lora_dirs):
            raise BadRequestError(f"lora_path {body.lora_path} is outside the allowed adapter directories",
                                  fix="put the adapter under a directory given with --lora-dir", param="lora_path")
        engine_key = self.registry.table.target(self.registry.table.primary, None).engine
        ms = await self.engines[engine_key].load_adapter(body.lora_name, str(path))
        self.registry.add(body.lora_name, Target(engine_key, body.lora_name))
        self.metrics.adapter_loads.labels("load").inc()
        return {"status": "ok", "lora_name": body.lora_name, "load_ms": round(ms, 1)}

    async def unload_adapter(self, body: wire.UnloadLoraAdapterRequest) -> dict[str, object]:
        self._check_lora_updates()
        target = self.registry.remove(body.lora_name)
        try:
            await self.engines[target.engine].unload_adapter(body.lora_name)
        except Exception:
            self.registry.add(body.lora_name, target)  # still loaded: still routable
            raise
        self.metrics.adapter_loads.labels("unload").inc()
        return {"status": "ok", "lora_name": body.lora_name}

    def _check_lora_updates(self) -> None:
        if not self.settings.enable_lora_updates:
            raise ModelNotFoundError("runtime adapter loading is off",
                                     fix="start the server with --enable-lora-updates")

    # ---------------------------------------------------------------------------------------------- status
    def models(self) -> wire.ModelList:
        """Tasks, deployments and adapters by name (no filesystem paths: those are in :meth:`adapter_paths`)."""
        table, plan = self.registry.table, self.plan
        cards = [wire.ModelCard(id="auto", kind="task")]
        cards += [wire.ModelCard(id=t, kind="task", root=table.primary) for t in TASKS]
        cards += [wire.ModelCard(id=d, kind="deployment") for d in plan.deployments]
        cards += [wire.ModelCard(id=name, kind="adapter", root=name, parent=self._model_name(target.engine))
                  for name, target in table.adapters.items()]
        return wire.ModelList(data=cards)

    def adapter_paths(self) -> dict[str, str]:
        table = self.registry.table
        return {name: self.engines[t.engine].adapters().get(name, "") for name, t in table.adapters.items()}

    def _model_name(self, engine_key: str) -> str:
        return next((n for n, e in self.plan.models.items() if str(e.path) == engine_key), Path(engine_key).name)

    def placement(self) -> dict[str, object]:
        """Per engine with ``engine.adaptive``: which adapter runs on a folded copy, and the traffic it saw."""
        status = {Path(key).name: getattr(engine, "placement_status", lambda: None)()
                  for key, engine in self.engines.items()}
        return {name: s for name, s in status.items() if s is not None}

    async def health(self) -> dict[str, bool]:
        return {key: await engine.health() for key, engine in self.engines.items()}

    async def aclose(self) -> None:
        for engine in self.engines.values():
            await engine.aclose()


def sampling_params(body: wire.SamplingFields) -> SamplingParams:
    return SamplingParams(max_new_tokens=body.token_limit or DEFAULT_MAX_TOKENS, temperature=body.temperature or 0.0,
                          top_p=body.top_p or 1.0, stop=body.stops, seed=body.seed, min_tokens=body.min_tokens,
                          ignore_eos=body.ignore_eos)


def response_body(endpoint: Endpoint, model: str, result: EngineResult) -> BaseModel:
    if endpoint == "chat":
        return wire.ChatCompletionResponse(model=model, usage=_usage(result), choices=[wire.ChatChoice(
            message={"role": "assistant", "content": result.text}, finish_reason=result.finish_reason)])
    return wire.CompletionResponse(model=model, usage=_usage(result), choices=[wire.CompletionChoice(
        text=result.text, finish_reason=result.finish_reason)])


def _usage(result: EngineResult | StreamDelta) -> wire.Usage:
    return wire.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                      total_tokens=result.prompt_tokens + result.completion_tokens)


async def _chain(first: list[StreamDelta], rest: AsyncIterator[StreamDelta]) -> AsyncIterator[StreamDelta]:
    for item in first:
        yield item
        if item.finish_reason is not None:
            return
    async for item in rest:
        yield item


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _rid() -> str:
    return uuid.uuid4().hex
