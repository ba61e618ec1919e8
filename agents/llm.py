"""Helpers for the agent's model calls: a ChatOpenAI per task route, bounded retries, and the route the runtime
reported (from its response headers)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.api_types import route_from_headers

log = logging.getLogger(__name__)
RETRIES = 3  # attempts after the first for 429 / 503 / timeouts / connection errors
BACKOFF_S = 0.5  # doubled after each failed attempt


@dataclass(frozen=True)
class Reply:
    text: str
    route: dict[str, str]  # deployment, adapter, task, engine as the runtime reported them
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str | None = None  # "length" when max_tokens cut the answer off


class CallFailed(RuntimeError):
    """A model call that still failed after its retries; the agent records it and stops."""


def chat_factory(base_url: str, api_key: str = "none", deployment: str | None = None,
                 max_tokens: int | dict[str, int] = 256, timeout_s: float = 120.0) -> Callable[[str], Any]:
    """A maker of ChatOpenAI clients whose ``model`` is the task (or ``DEPLOYMENT/task``); ``max_tokens`` is one
    cap for every task or one per task (256 for a task it leaves out)."""
    from langchain_openai import ChatOpenAI

    def make(task: str):
        model = f"{deployment}/{task}" if deployment else task
        cap = max_tokens.get(task, 256) if isinstance(max_tokens, dict) else max_tokens
        return ChatOpenAI(base_url=base_url, api_key=api_key, model=model, temperature=0, max_tokens=cap,
                          timeout=timeout_s, max_retries=0, include_response_headers=True)

    return make


def _retryable(error: Exception) -> bool:
    try:
        import openai
    except ImportError:  # pragma: no cover
        return False
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (429, 500, 502, 503, 504)
    return isinstance(error, openai.APITimeoutError | openai.APIConnectionError | TimeoutError)


def call(llm: Any, messages: list[tuple[str, str]], sleep: Callable[[float], None] = time.sleep) -> Reply:
    """Invoke with bounded retries and backoff on transient errors; raise CallFailed when they run out."""
    last: Exception | None = None
    for attempt in range(RETRIES + 1):
        if attempt:
            sleep(BACKOFF_S * 2 ** (attempt - 1))
        start = time.perf_counter()
        try:
            message = llm.invoke(messages)
        except Exception as e:  # classified just below; non-transient errors are raised at once
            if not _retryable(e):
                raise CallFailed(f"{type(e).__name__}: {e}") from e
            last = e
            log.warning("model call failed (%s), attempt %d of %d", type(e).__name__, attempt + 1, RETRIES + 1)
            continue
        metadata = getattr(message, "response_metadata", None) or {}
        usage = getattr(message, "usage_metadata", None) or {}
        route = route_from_headers(metadata.get("headers") or {})
        return Reply(str(message.content), route, usage.get("input_tokens", 0), usage.get("output_tokens", 0),
                     time.perf_counter() - start, metadata.get("finish_reason"))
    raise CallFailed(f"gave up after {RETRIES + 1} attempts: {type(last).__name__}: {last}")
