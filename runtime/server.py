"""build_app(...) -> FastAPI: thin OpenAI-compatible routes over the router and the engines.

Every error leaves as the OpenAI error shape through one handler; the route taken (deployment, engine, adapter,
task, reason) goes back in ``x-mixmerge-*`` response headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from runtime import api_types as wire
from runtime.config import TASKS
from runtime.deploy import ServingPlan
from runtime.engines.base import Engine, EngineRequest, EngineResult
from runtime.engines.hf import SamplingParams
from runtime.errors import (
    AuthenticationError,
    BadRequestError,
    EngineUnavailableError,
    MixmergeError,
    ModelNotFoundError,
    UpstreamTimeoutError,
)
from runtime.metrics import ServerMetrics
from runtime.router import Route, Target, fallback_routes, route

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 256


@dataclass
class ServerSettings:
    api_key: str | None = None  # require `Authorization: Bearer KEY` when set
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 300.0
    enable_lora_updates: bool = False  # POST /v1/load_lora_adapter and /v1/unload_lora_adapter
    lora_dirs: list[Path] = field(default_factory=list)  # where runtime-loaded adapters may come from


def build_app(plan: ServingPlan, engines: dict[str, Engine], settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = ServerMetrics()
    app = FastAPI(title="mixmerge", version="0.1.0")
    app.state.plan, app.state.engines, app.state.metrics = plan, engines, metrics

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            if request.url.path.startswith("/v1/"):
                _check_key(request, settings)
                size = int(request.headers.get("content-length") or 0)
                if size > settings.max_body_bytes:
                    raise BadRequestError(f"request body of {size} bytes is over the {settings.max_body_bytes} limit",
                                          fix="send a smaller request")
            return await call_next(request)
        except MixmergeError as e:
            return _error(e, metrics)

    @app.exception_handler(MixmergeError)
    async def on_error(request: Request, exc: MixmergeError):
        return _error(exc, metrics)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        return _error(BadRequestError(_describe(exc.errors())), metrics)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _error(MixmergeError(f"internal error: {type(exc).__name__}"), metrics)

    @app.get("/health")
    async def health():
        checks = {key: await engine.health() for key, engine in engines.items()}
        status = 200 if all(checks.values()) else 503
        return JSONResponse({"status": "ok" if status == 200 else "unhealthy", "engines": len(checks)}, status)

    @app.get("/metrics")
    async def prometheus():
        for key, engine in engines.items():
            metrics.queue_depth.labels(Path(key).name).set(engine.queue_depth())
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        return wire.ModelList(data=_model_cards(plan, engines)).model_dump()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = _parse(wire.ChatCompletionRequest, await request.body())
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        user_text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return await _serve("chat", body, user_text, lambda r: EngineRequest(
            _rid(), _params(body), messages=messages, adapter=r.adapter))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = _parse(wire.CompletionRequest, await request.body())
        return await _serve("completions", body, body.text, lambda r: EngineRequest(
            _rid(), _params(body), prompt=body.text, adapter=r.adapter))

    async def _serve(endpoint: str, body: wire.SamplingFields, text: str, make):
        first = route(plan.table, body.model, text)
        routes = [first, *fallback_routes(plan.table, first)]
        if body.stream:
            return await _stream(endpoint, body, routes, make)
        start = time.perf_counter()
        result, used = await _with_fallbacks(routes, lambda r: _timed(engines[r.engine].generate(make(r))))
        _count(endpoint, used, result, time.perf_counter() - start)
        usage = wire.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                           total_tokens=result.prompt_tokens + result.completion_tokens)
        if endpoint == "chat":
            payload = wire.ChatCompletionResponse(model=body.model, usage=usage, choices=[wire.ChatChoice(
                message={"role": "assistant", "content": result.text}, finish_reason=result.finish_reason)])
        else:
            payload = wire.CompletionResponse(model=body.model, usage=usage, choices=[wire.CompletionChoice(
                text=result.text, finish_reason=result.finish_reason)])
        return JSONResponse(payload.model_dump(), headers=_headers(used))

    async def _timed(coro):
        try:
            return await asyncio.wait_for(coro, settings.request_timeout_s)
        except TimeoutError as e:
            raise UpstreamTimeoutError(f"generation took longer than {settings.request_timeout_s:.0f} s",
                                       fix="lower max_tokens or raise the server's timeout") from e

    async def _with_fallbacks(routes: list[Route], call) -> tuple[EngineResult, Route]:
        last: Exception | None = None
        for i, r in enumerate(routes):
            if r.engine not in engines:
                continue
            try:
                return await call(r), r
            except (BadRequestError, AuthenticationError, UpstreamTimeoutError):
                raise  # the request itself is at fault, or it already took its time: no fallback
            except Exception as e:  # an engine or adapter failure: try the next route
                last = e
                if i + 1 < len(routes):
                    metrics.fallbacks.labels(r.deployment, routes[i + 1].deployment).inc()
                    log.warning("route %s failed (%s); falling back to %s", r, e, routes[i + 1].deployment)
        if isinstance(last, MixmergeError):
            raise last
        raise EngineUnavailableError(f"every route failed; last error: {last}", fix="check GET /health")

    async def _stream(endpoint: str, body: wire.SamplingFields, routes: list[Route], make):
        start = time.perf_counter()

        async def first_delta(r: Route):
            """Start the stream; an error before the first token still gets a status code (and a fallback)."""
            stream = engines[r.engine].stream(make(r))
            try:
                return stream, await _timed(anext(stream))
            except StopAsyncIteration:
                return stream, None

        (stream, first), used = await _with_fallbacks(routes, first_delta)
        metrics.ttft.labels(used.deployment, used.adapter or "").observe(time.perf_counter() - start)
        return StreamingResponse(_sse(endpoint, body, used, first, stream, start), media_type="text/event-stream",
                                 headers=_headers(used))

    async def _sse(endpoint, body, used: Route, first, stream: AsyncIterator, start: float):
        cid, created = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        chunk = wire.chat_chunk if endpoint == "chat" else wire.completion_chunk
        last = None
        if endpoint == "chat":
            yield _event(chunk(cid, body.model, created, {"role": "assistant", "content": ""}, None))
        try:
            pending = [first] if first is not None else []
            async for delta in _chain(pending, stream):
                last = delta
                piece = {"content": delta.text} if endpoint == "chat" else delta.text
                yield _event(chunk(cid, body.model, created, piece, delta.finish_reason))
        except MixmergeError as e:
            yield _event(e.to_openai())
        if body.include_usage and last is not None:
            usage = wire.Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                               total_tokens=last.prompt_tokens + last.completion_tokens)
            yield _event(chunk(cid, body.model, created, {} if endpoint == "chat" else "", None, usage,
                               with_choice=False))
        yield "data: [DONE]\n\n"
        if last is not None:
            _count(endpoint, used, last, time.perf_counter() - start)

    def _count(endpoint: str, used: Route, result, seconds: float) -> None:
        adapter = used.adapter or ""
        metrics.requests.labels(endpoint, used.deployment, adapter, "200").inc()
        metrics.latency.labels(endpoint, used.deployment, adapter).observe(seconds)
        metrics.tokens.labels("prompt", used.deployment, adapter).inc(result.prompt_tokens)
        metrics.tokens.labels("completion", used.deployment, adapter).inc(result.completion_tokens)
        metrics.routes.labels(used.deployment, used.task or "", adapter).inc()

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request):
        body = _lora_body(wire.LoadLoraAdapterRequest, await request.body(), settings)
        path = Path(body.lora_path).expanduser().resolve()
        if not any(path.is_relative_to(d.resolve()) for d in settings.lora_dirs):
            raise BadRequestError(f"lora_path {path} is outside the allowed adapter directories",
                                  fix="put the adapter under a directory given with --lora-dir", param="lora_path")
        engine_key = plan.table.target(plan.table.primary, None).engine
        ms = await engines[engine_key].load_adapter(body.lora_name, str(path))
        plan.table.adapters[body.lora_name] = Target(engine_key, body.lora_name)
        metrics.adapter_loads.labels("load").inc()
        return JSONResponse({"status": "ok", "lora_name": body.lora_name, "load_ms": round(ms, 1)})

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request):
        body = _lora_body(wire.UnloadLoraAdapterRequest, await request.body(), settings)
        target = plan.table.adapters.get(body.lora_name)
        if target is None:
            raise ModelNotFoundError(f"adapter '{body.lora_name}' is not loaded", fix="see GET /v1/models",
                                     param="lora_name")
        await engines[target.engine].unload_adapter(body.lora_name)
        del plan.table.adapters[body.lora_name]
        metrics.adapter_loads.labels("unload").inc()
        return JSONResponse({"status": "ok", "lora_name": body.lora_name})

    @app.on_event("shutdown")
    async def close_engines():
        for engine in engines.values():
            await engine.aclose()

    return app


async def _chain(first: list, rest: AsyncIterator):
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


def _params(body: wire.SamplingFields) -> SamplingParams:
    return SamplingParams(max_new_tokens=body.token_limit or DEFAULT_MAX_TOKENS, temperature=body.temperature,
                          top_p=body.top_p, stop=body.stops, seed=body.seed)


def _parse(model: type, raw: bytes):
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as e:
        raise BadRequestError(_describe(e.errors()), fix="see the OpenAI API reference for this endpoint") from e


def _lora_body(model: type, raw: bytes, settings: ServerSettings):
    if not settings.enable_lora_updates:
        raise ModelNotFoundError("runtime adapter loading is off", fix="start the server with --enable-lora-updates")
    return _parse(model, raw)


def _describe(errors: list) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid').removeprefix('Value error, ')}")
    return "invalid request: " + "; ".join(parts)


def _check_key(request: Request, settings: ServerSettings) -> None:
    if settings.api_key and request.headers.get("authorization") != f"Bearer {settings.api_key}":
        raise AuthenticationError("missing or wrong API key", fix="send Authorization: Bearer <key>")


def _error(exc: MixmergeError, metrics: ServerMetrics) -> JSONResponse:
    metrics.errors.labels(exc.error_type).inc()
    return JSONResponse(exc.to_openai(), status_code=exc.status_code)


def _headers(r: Route) -> dict[str, str]:
    fields = {"deployment": r.deployment, "engine": Path(r.engine).name, "adapter": r.adapter or "",
              "task": r.task or "", "route-reason": r.reason}
    return {f"{wire.ROUTE_HEADER}{k}": v for k, v in fields.items()}


def _model_cards(plan: ServingPlan, engines: dict[str, Engine]) -> list[wire.ModelCard]:
    cards = [wire.ModelCard(id="auto", kind="task")]
    cards += [wire.ModelCard(id=t, kind="task", root=plan.table.primary) for t in TASKS]
    cards += [wire.ModelCard(id=d, kind="deployment") for d in plan.deployments]
    for name, target in plan.table.adapters.items():
        cards.append(wire.ModelCard(id=name, kind="adapter", root=str(engines[target.engine].adapters().get(name, "")),
                                    parent=_model_name(plan, target.engine)))
    return cards


def _model_name(plan: ServingPlan, engine_key: str) -> str:
    return next((n for n, e in plan.models.items() if str(e.path) == engine_key), Path(engine_key).name)
