"""A deterministic engine for tests and --dry-run: the answer is a function of (adapter, prompt), streamed
word by word. It counts tokens as whitespace-separated words."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

from runtime.engines.base import EngineRequest, EngineResult, StreamDelta
from runtime.errors import BadRequestError, ModelNotFoundError

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


class FakeEngine:
    kind = "fake"

    def __init__(self, model: str = "fake", adapters: dict[str, str] | None = None, delay_s: float = 0.0,
                 context_length: int = 2048, fail_adapters: tuple[str, ...] = ()) -> None:
        self.model = model
        self._adapters = dict(adapters or {})
        self.delay_s = delay_s  # per token: lets tests observe streaming and concurrency
        self.context_length = context_length
        self.fail_adapters = set(fail_adapters)  # adapters whose requests fail: exercises fallbacks
        self.calls: list[EngineRequest] = []
        self._inflight = 0

    def _prompt(self, request: EngineRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        return "\n".join(f"{m['role']}: {m['content']}" for m in request.messages or [])

    def _answer(self, request: EngineRequest) -> tuple[list[str], int]:
        if request.adapter and request.adapter not in self._adapters:
            raise ModelNotFoundError(f"adapter '{request.adapter}' is not loaded", fix="load it first")
        if request.adapter in self.fail_adapters:
            raise RuntimeError(f"adapter {request.adapter} failed (scripted)")
        prompt = self._prompt(request)
        n_prompt = len(prompt.split())
        if n_prompt + request.params.max_new_tokens > self.context_length:
            raise BadRequestError(f"prompt of {n_prompt} tokens + max_tokens exceeds the context of "
                                  f"{self.context_length}", fix="shorten the prompt or lower max_tokens")
        seed = hashlib.sha256(f"{request.adapter}|{prompt}".encode()).digest()
        words = [WORDS[b % len(WORDS)] for b in seed[: request.params.max_new_tokens]]
        return words, n_prompt

    async def generate(self, request: EngineRequest) -> EngineResult:
        chunks = [d async for d in self.stream(request)]
        last = chunks[-1]
        return EngineResult("".join(c.text for c in chunks), last.prompt_tokens, last.completion_tokens,
                            last.finish_reason or "stop")

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamDelta]:
        self.calls.append(request)
        words, n_prompt = self._answer(request)
        text = ""
        self._inflight += 1
        try:
            for i, word in enumerate(words):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                piece = ("" if i == 0 else " ") + word
                if any(s in text + piece for s in request.params.stop):
                    yield StreamDelta("", "stop", n_prompt, i)
                    return
                text += piece
                last = i == len(words) - 1
                finish = ("length" if len(words) == request.params.max_new_tokens else "stop") if last else None
                yield StreamDelta(piece, finish, n_prompt, i + 1)
        finally:
            self._inflight -= 1

    async def load_adapter(self, name: str, path: str) -> float:
        start = time.perf_counter()
        self._adapters[name] = path
        return (time.perf_counter() - start) * 1000

    async def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise ModelNotFoundError(f"adapter '{name}' is not loaded", fix="see GET /v1/models")
        del self._adapters[name]

    def adapters(self) -> dict[str, str]:
        return dict(self._adapters)

    async def health(self) -> bool:
        return True

    def queue_depth(self) -> int:
        return self._inflight

    async def aclose(self) -> None:
        return None
