"""OpenAI wire types: chat/completions, completions, models, errors and stream chunks.

Requests validate the fields we act on and ignore the rest (clients such as LangChain send extra OpenAI fields
like ``logprobs: false``); values we cannot honour (``n > 1``, tools) are rejected with a 400 that says so.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: keep the text ones
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class StreamOptions(Lenient):
    include_usage: bool = False


class SamplingFields(Lenient):
    model: str
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)  # one choice per request

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> None:
        if value:
            raise ValueError("tool calling is not supported by this server")
        return None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request")
        return value

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoice(BaseModel):
    index: int = 0
    message: dict[str, Any]
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage


def chat_chunk(id_: str, model: str, created: int, delta: dict[str, Any], finish: str | None,
               usage: Usage | None = None, with_choice: bool = True) -> dict[str, Any]:
    """One ``chat.completion.chunk``; the usage chunk has no choices (as OpenAI sends it)."""
    choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if with_choice else []
    chunk: dict[str, Any] = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": choices}
    if usage is not None:
        chunk["usage"] = usage.model_dump()
    return chunk


def completion_chunk(id_: str, model: str, created: int, text: str, finish: str | None,
                     usage: Usage | None = None, with_choice: bool = True) -> dict[str, Any]:
    choices = [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}] if with_choice else []
    chunk: dict[str, Any] = {"id": id_, "object": "text_completion", "created": created, "model": model,
                             "choices": choices}
    if usage is not None:
        chunk["usage"] = usage.model_dump()
    return chunk


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "mixmerge"
    root: str | None = None
    parent: str | None = None
    kind: str  # task | deployment | adapter | model


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadLoraAdapterRequest(Lenient):
    """vLLM's shape for POST /v1/load_lora_adapter."""

    lora_name: str
    lora_path: str


ROUTE_HEADER = "x-mixmerge-"  # the route goes back in x-mixmerge-{deployment,engine,adapter,task,route-reason}


def route_from_headers(headers: Any) -> dict[str, str]:
    """The route a response reports (deployment, engine, adapter, task, route-reason), from its headers."""
    return {k.removeprefix(ROUTE_HEADER): v for k, v in headers.items() if k.startswith(ROUTE_HEADER)}


class UnloadLoraAdapterRequest(Lenient):
    lora_name: str
    lora_int_id: int | None = None
