"""A real `runtime serve` (uvicorn on 127.0.0.1, hf engine, tiny model + two LoRA experts) driven by the official
openai client (sync, async, streaming) and LangChain's ChatOpenAI."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from runtime.models import ModelStore


def _lora(base: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(out)
    (out / "manifest.json").write_text(json.dumps({"kind": "expert", "parent": "tiny"}))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("home")
    root = tmp_path_factory.mktemp("srv")
    env = os.environ | {"MIXMERGE_HOME": str(home)}
    os.environ["MIXMERGE_HOME"], old = str(home), os.environ.get("MIXMERGE_HOME")
    try:
        store = ModelStore()
        store.register("tiny", tiny_model_dir)
        store.register("tiny-gen", _lora(tiny_model_dir, root / "gen", 1), "expert", parent="tiny")
        store.register("tiny-rev", _lora(tiny_model_dir, root / "rev", 2), "expert", parent="tiny")
    finally:
        os.environ.pop("MIXMERGE_HOME") if old is None else os.environ.update(MIXMERGE_HOME=old)
    deployment = root / "deployments" / "tiny-experts.yaml"
    deployment.parent.mkdir()
    deployment.write_text("name: tiny-experts\noption: experts\nbase_model: tiny\n"
                          "adapters: {generation: tiny-gen, review: tiny-rev}\nengine: {max_loras: 2}\n")
    port = _free_port()
    runtime = Path(sys.executable).parent / "runtime"
    proc = subprocess.Popen([str(runtime), "serve", "--deployment", str(deployment), "--port", str(port),
                             "--api-key", "test-key"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(proc.stdout.read().decode() if proc.stdout else "server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


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
