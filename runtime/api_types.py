"""OpenAI wire types: chat/completions, completions, models, errors and stream chunks.

Requests are strict: an argument the server does not know is a 400 that names it (as OpenAI answers
"Unrecognized request argument"), and an OpenAI argument it does not implement is accepted only at its no-op
value (``logprobs: false``, ``tool_choice: "none"``, ...; LangChain and the official client send some of those),
any other value is a 400 that names it. Nothing a client asks for is silently ignored. vLLM's sampling extras
``min_tokens`` and ``ignore_eos`` are implemented.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_SEED = 2**63 - 1
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # the author's name: accepted, as it changes nothing in a single-user prompt
    tool_call_id: str | None = None  # carried by `tool` messages; tool calls themselves are refused

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(f"content part type {kind!r} is not supported; send text parts only")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's; usage is sent once, at the end

    @field_validator("continuous_usage_stats")
    @classmethod
    def _no_continuous(cls, value: bool) -> bool:
        if value:
            raise ValueError("continuous_usage_stats is not supported; usage comes once, at the end")
        return value


# OpenAI arguments this server does not implement, each with the value that means "not used". A request may send
# that value (clients fill some in by default); anything else is refused with the argument's name.
NOT_IMPLEMENTED: dict[str, Any] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "response_format": (None, {"type": "text"}),
    "tool_choice": (None, "none", "auto"), "parallel_tool_calls": (None, True, False), "functions": (None, []),
    "function_call": (None, "none", "auto"), "echo": (None, False), "best_of": (None, 1), "suffix": (None, ""),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,), "reasoning_effort": (None,),
    "web_search_options": (None,),
}


class SamplingFields(Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    min_tokens: int = Field(0, ge=0)  # vLLM extra: no EOS or stop string before this many tokens
    ignore_eos: bool = False  # vLLM extra: decode to max_tokens whatever the model says
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, le=1)  # one choice per request
    user: str | None = None  # an end-user id for the caller's own records: accepted, logged nowhere
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    response_format: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None

    @field_validator(*[k for k in NOT_IMPLEMENTED if k not in ("echo", "best_of", "suffix")])
    @classmethod
    def _not_implemented(cls, value: Any, info: ValidationInfo) -> Any:
        return _no_op_only(value, info.field_name)

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


def _no_op_only(value: Any, name: str | None) -> Any:
    if value not in NOT_IMPLEMENTED[name or ""]:
        raise ValueError(f"{name} is not supported by this server; leave it unset")
    return value


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
    echo: Any = None
    best_of: Any = None
    suffix: Any = None

    @field_validator("echo", "best_of", "suffix")
    @classmethod
    def _not_implemented(cls, value: Any, info: ValidationInfo) -> Any:
        return _no_op_only(value, info.field_name)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request")
        if not (value if isinstance(value, str) else value[0]):
            raise ValueError("the prompt is empty")
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


class LoadLoraAdapterRequest(Strict):
    """vLLM's shape for POST /v1/load_lora_adapter."""

    lora_name: str = Field(pattern=ADAPTER_NAME.pattern)
    lora_path: str = Field(min_length=1)

    @field_validator("lora_path")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\0" in value:
            raise ValueError("the path has a NUL byte")
        return value


ROUTE_HEADER = "x-mixmerge-"  # the route goes back in x-mixmerge-{deployment,engine,adapter,task,route-reason}


def route_from_headers(headers: Any) -> dict[str, str]:
    """The route a response reports (deployment, engine, adapter, task, route-reason), from its headers."""
    return {k.removeprefix(ROUTE_HEADER): v for k, v in headers.items() if k.startswith(ROUTE_HEADER)}


class UnloadLoraAdapterRequest(Strict):
    lora_name: str = Field(pattern=ADAPTER_NAME.pattern)
    lora_int_id: int | None = None
