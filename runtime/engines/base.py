"""The Engine protocol, its request and result types, and the registry of engine kinds."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from runtime.config import EngineConfig
from runtime.errors import BadRequestError

Message = dict[str, str]


SAMPLING_EPS = 1e-5  # temperatures below are greedy (vLLM's sampler: the same constant)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_tokens: int = 0  # no EOS and no stop string before this many tokens (vLLM's `min_tokens`)
    ignore_eos: bool = False  # run to max_new_tokens: fixed-length load, so early stoppers do not look fast

    @property
    def greedy(self) -> bool:
        """Argmax: a temperature below vLLM's ``_SAMPLING_EPS`` (1e-5), as vLLM; dividing the logits by a tinier
        one overflows them to inf and sampling to NaN."""
        return self.temperature < SAMPLING_EPS

    @property
    def eos_floor(self) -> int:
        """Tokens before which the answer may not end (EOS or stop string)."""
        return self.max_new_tokens if self.ignore_eos else min(self.min_tokens, self.max_new_tokens)


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    params: SamplingParams
    messages: list[Message] | None = None  # chat: the engine applies its chat template
    prompt: str | None = None  # completion: raw text
    adapter: str | None = None  # a resident adapter's name; None = the engine's own weights


@dataclass(frozen=True)
class EngineResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    token_ids: list[int] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class StreamDelta:
    text: str  # new text since the last delta
    finish_reason: str | None = None  # set on the last delta
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class Engine(Protocol):
    kind: str

    async def generate(self, request: EngineRequest) -> EngineResult: ...

    def stream(self, request: EngineRequest) -> AsyncIterator[StreamDelta]: ...

    async def load_adapter(self, name: str, path: str) -> float: ...  # milliseconds

    async def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> dict[str, str]: ...  # name -> path of every known adapter

    async def health(self) -> bool: ...

    def queue_depth(self) -> int: ...

    async def aclose(self) -> None: ...


ENGINE_MODULES: dict[str, str] = {
    "hf": "runtime.engines.hf_engine:HFEngine",
    "vllm": "runtime.engines.vllm:VLLMEngine",
    "remote": "runtime.engines.remote:RemoteEngine",
    "fake": "runtime.engines.fake:FakeEngine",
}


def engine_class(kind: str) -> type:
    """Look an engine kind up lazily, so `import runtime` works without heavy optional backends (vllm)."""
    if kind not in ENGINE_MODULES:
        raise BadRequestError(f"unknown engine '{kind}'", fix=f"use one of: {', '.join(ENGINE_MODULES)}")
    module, _, cls = ENGINE_MODULES[kind].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_engine(kind: str, model_path: Path, adapters: dict[str, Path], config: EngineConfig) -> Engine:
    """Start one engine of ``kind`` for a model directory and its adapters."""
    cls = engine_class(kind)
    if kind == "fake":
        return cls(model_path.name, {k: str(v) for k, v in adapters.items()})
    return cls(model_path, adapters, config)


async def joined(deltas: AsyncIterator[StreamDelta]) -> EngineResult:
    """A whole answer from a stream of deltas (the last one carries the finish and the usage)."""
    text, last = "", None
    async for delta in deltas:
        text += delta.text
        last = delta
    assert last is not None, "a stream ends with a delta that carries its finish"
    return EngineResult(text, last.prompt_tokens, last.completion_tokens, last.finish_reason or "stop")
