"""A real `runtime serve` (uvicorn on 127.0.0.1, hf engine, tiny model + two LoRA experts) driven by the official
openai client (sync, async, streaming) and LangChain's ChatOpenAI."""

from __future__ import annotations

import asyncio

import httpx
import pytest


def test_openai_sync_client_reaches_the_expert_of_its_task(server: str):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="test-key")
    raw = client.chat.completions.with_raw_response.create(
        model="review", messages=[{"role": "user", "content": "def f(x):\n    return x - 1"}], max_tokens=6)
    completion = raw.parse()
    assert raw.headers["x-mixmerge-adapter"] == "tiny-rev" and raw.headers["x-mixmerge-task"] == "review"
    assert completion.choices[0].message.content and completion.usage.completion_tokens <= 6
    models = {m.id for m in client.models.list().data}
    assert {"generation", "review", "tiny-experts", "tiny-gen", "tiny-rev", "auto"} <= models


def test_openai_async_client_concurrent_requests(server: str):
    from openai import AsyncOpenAI

    async def run() -> list[str]:
        client = AsyncOpenAI(base_url=f"{server}/v1", api_key="test-key")
        calls = [client.completions.create(model=m, prompt="x = 1", max_tokens=5)
                 for m in ("generation", "review", "summarization", "generation")]
        results = await asyncio.gather(*calls)
        await client.close()
        return [r.choices[0].text for r in results]

    texts = asyncio.run(run())
    assert len(texts) == 4 and texts[0] == texts[3]  # greedy and deterministic under batching


def test_openai_streaming_matches_the_non_streamed_answer(server: str):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="test-key")
    messages = [{"role": "user", "content": "Write a function that adds."}]
    full = client.chat.completions.create(model="generation", messages=messages, max_tokens=8)
    stream = client.chat.completions.create(model="generation", messages=messages, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_langchain_chat_openai_and_route_metrics(server: str):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server}/v1", api_key="test-key", model="review", max_tokens=5, temperature=0)
    answer = llm.invoke("Is there a bug?\n\ndef f(x):\n    return x - 1")
    assert isinstance(answer.content, str)
    metrics = httpx.get(f"{server}/metrics").text
    assert 'mixmerge_routes_total{adapter="tiny-rev",deployment="tiny-experts",task="review"}' in metrics


def test_errors_over_http_keep_the_openai_shape_and_the_server_alive(server: str):
    from openai import AuthenticationError, BadRequestError, NotFoundError, OpenAI

    bad_key = OpenAI(base_url=f"{server}/v1", api_key="wrong")
    with pytest.raises(AuthenticationError):
        bad_key.models.list()
    client = OpenAI(base_url=f"{server}/v1", api_key="test-key")
    with pytest.raises(NotFoundError, match="unknown model 'reveiw'"):
        client.chat.completions.create(model="reveiw", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(BadRequestError, match="exceeds the context"):
        client.chat.completions.create(model="generation", messages=[{"role": "user", "content": "x " * 5000}],
                                       max_tokens=10)
    assert httpx.get(f"{server}/health").status_code == 200
