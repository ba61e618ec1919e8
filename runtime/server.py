"""build_app(...) -> FastAPI: thin typed OpenAI-compatible routes over :class:`runtime.serving.OpenAIServing`.

Typed bodies make ``/openapi.json`` and ``/docs`` describe every request. Every error leaves in the OpenAI error
shape through one family of handlers (unknown routes and methods included); the route taken (deployment, engine,
adapter, task, reason) goes back in ``x-mixmerge-*`` response headers. The API key and the body limit are
checked by an ASGI guard before any route runs; the limit counts the bytes actually read (chunked bodies too).
The lifespan closes the engines on shutdown.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime import api_types as wire
from runtime.deploy import ServingPlan
from runtime.engines.base import Engine
from runtime.errors import (
    AuthenticationError,
    BadRequestError,
    MethodNotAllowedError,
    MixmergeError,
    ModelNotFoundError,
    PayloadTooLargeError,
)
from runtime.metrics import ServerMetrics
from runtime.router import Route
from runtime.serving import OpenAIServing, Served, ServerSettings

log = logging.getLogger(__name__)


def build_app(plan: ServingPlan, engines: dict[str, Engine], settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = ServerMetrics()
    serving = OpenAIServing(plan, engines, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await serving.aclose()

    app = FastAPI(title="mixmerge", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible serving with per-task routing for small code LLMs.")
    app.state.serving = serving
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    _add_error_handlers(app, metrics)
    _add_info_routes(app, serving, engines, settings, metrics)
    _add_openai_routes(app, serving)
    return app


def _add_info_routes(app: FastAPI, serving: OpenAIServing, engines: dict[str, Engine], settings: ServerSettings,
                     metrics: ServerMetrics) -> None:
    """Health, Prometheus metrics, the model list and the debug views."""

    @app.get("/health")
    async def health() -> JSONResponse:
        checks = await serving.health()
        status = 200 if all(checks.values()) else 503
        return JSONResponse({"status": "ok" if status == 200 else "unhealthy", "engines": len(checks)}, status)

    @app.get("/metrics")
    async def prometheus() -> Response:
        for key, engine in engines.items():
            metrics.queue_depth.labels(Path(key).name).set(engine.queue_depth())
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> wire.ModelList:
        return serving.models()

    @app.get("/v1/debug/adapters")
    async def adapter_paths() -> dict[str, str]:
        """Adapter name -> path on the server's disk: only behind an API key (404 when the server has none)."""
        if not settings.api_key:
            raise ModelNotFoundError("the debug view needs an API key", fix="start the server with --api-key")
        return serving.adapter_paths()

    @app.get("/v1/debug/placement")
    async def placement() -> dict[str, object]:
        """engine.adaptive: each engine's placement (lora / folding / folded / draining) and adapter shares."""
        return serving.placement()


def _add_openai_routes(app: FastAPI, serving: OpenAIServing) -> None:
    """The OpenAI endpoints and the runtime LoRA load/unload ones, typed so /openapi.json lists each body."""

    @app.post("/v1/chat/completions")
    async def chat(body: wire.ChatCompletionRequest) -> Response:
        return _respond(await serving.chat(body))

    @app.post("/v1/completions")
    async def completions(body: wire.CompletionRequest) -> Response:
        return _respond(await serving.completions(body))

    @app.post("/v1/load_lora_adapter")
    async def load_lora(body: wire.LoadLoraAdapterRequest) -> JSONResponse:
        return JSONResponse(await serving.load_adapter(body))

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(body: wire.UnloadLoraAdapterRequest) -> JSONResponse:
        return JSONResponse(await serving.unload_adapter(body))


def _respond(served: Served) -> Response:
    headers = _headers(served.route)
    if served.events is not None:
        return StreamingResponse(served.events, media_type="text/event-stream", headers=headers)
    assert served.body is not None
    return JSONResponse(served.body.model_dump(), headers=headers)


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    @app.exception_handler(MixmergeError)
    async def on_error(request: Request, exc: MixmergeError) -> JSONResponse:
        return error_response(exc, metrics)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(BadRequestError(describe(exc.errors()), param=_first_param(exc.errors()),
                                              fix="see /docs for this endpoint's request schema"), metrics)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            err: MixmergeError = ModelNotFoundError(f"no route {where}", fix="see /docs for the endpoints")
        elif exc.status_code == 405:
            err = MethodNotAllowedError(f"method not allowed: {where}", fix="see /docs for the endpoints")
        else:
            err = BadRequestError(f"{where}: {exc.detail}")
            err.status_code = exc.status_code
        return error_response(err, metrics)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(MixmergeError(f"internal error: {type(exc).__name__}"), metrics)


class Guard:
    """Pure ASGI middleware for /v1/: the API key first, then the body read under the size limit and replayed to
    the route (a body over the limit, declared or chunked, is a 413 before any parsing or tokenizing)."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        try:
            self._check_key(scope)
            body = await self._read_body(scope, receive)
        except MixmergeError as e:
            return await error_response(e, self.metrics)(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnects, for streaming responses

        await self.app(scope, replay, send)

    def _check_key(self, scope: Scope) -> None:
        key = self.settings.api_key  # compared in constant time: a timing side channel leaks no prefix of it
        if key and not hmac.compare_digest(_header(scope, b"authorization").encode(), f"Bearer {key}".encode()):
            raise AuthenticationError("missing or wrong API key", fix="send Authorization: Bearer <key>")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"request body of {size}+ bytes is over the {limit}-byte limit",
                                fix="send a smaller request")


def _header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), "")


def describe(errors: list) -> str:
    """Pydantic errors as one line: where, and what is wrong (an unknown argument is named as such)."""
    parts: list[str] = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body" and not _union_tag(p)) or "body"
        if err.get("type") == "extra_forbidden":
            parts.append(f"unrecognized request argument: {loc}")
        elif err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
        else:
            parts.append(f"{loc}: {err.get('msg', 'invalid').removeprefix('Value error, ')}")
    return "invalid request: " + "; ".join(dict.fromkeys(parts))


def _union_tag(part: object) -> bool:
    """Pydantic names the branch of a union it tried (``str``, ``list[TextPart]``): not a place in the body."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "dict", "list"} or "[" in part)


def _first_param(errors: list) -> str | None:
    loc = [str(p) for p in (errors[0].get("loc", ()) if errors else ()) if p != "body"]
    return loc[0] if loc else None


def error_response(exc: MixmergeError, metrics: ServerMetrics) -> JSONResponse:
    metrics.errors.labels(exc.error_type).inc()
    return JSONResponse(exc.to_openai(), status_code=exc.status_code)


def _headers(r: Route) -> dict[str, str]:
    fields = {"deployment": r.deployment, "engine": Path(r.engine).name, "adapter": r.adapter or "",
              "task": r.task or "", "route-reason": r.reason}
    return {f"{wire.ROUTE_HEADER}{k}": v for k, v in fields.items()}

