"""Real vLLM (the CPU build here) serves the tiny model and two LoRA experts: its greedy outputs equal the hf
engine's in float32, only the runtime can reach it, adapters load at runtime, and a killed server comes back with
its adapters. One vLLM server (module fixture) serves every test; the last one kills it and closes the engine."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from tiny import build_tiny_model_dir

from runtime.config import EngineConfig
from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.hf_engine import HFEngine
from runtime.process import group_members

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
PROMPTS = ["def add(a, b):\n", "import os\n\nfor root, dirs, files in", "class Stack:\n    def push(self, x):"]
CONFIG = EngineConfig(kind="vllm", dtype="float32", max_loras=2, max_lora_rank=8, max_model_len=512)
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def model_and_adapters(tmp_path_factory: pytest.TempPathFactory):
    from loras import make_lora

    root = tmp_path_factory.mktemp("vllm")
    model = build_tiny_model_dir(root / "tiny-h64", heads=1)
    return model, {"one": make_lora(model, root / "one", 1), "two": make_lora(model, root / "two", 2)}


@pytest.fixture(scope="module")
def loop():
    """One event loop for every test of the module: the engine's HTTP client lives across them."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def vllm_engine(model_and_adapters, loop):
    from runtime.engines.vllm import VLLMEngine

    model, adapters = model_and_adapters
    engine = VLLMEngine(model, adapters, CONFIG, restart_backoff_s=1.0)
    log.warning("vLLM cold start %.1f s", engine.cold_start_s)
    yield engine
    loop.run_until_complete(engine.aclose())  # a second close is harmless


def _requests() -> list[EngineRequest]:
    return [EngineRequest(f"{a}-{i}", SamplingParams(max_new_tokens=12), prompt=p, adapter=a)
            for a in (None, "one", "two") for i, p in enumerate(PROMPTS)]


def test_vllm_greedy_outputs_equal_hf_in_fp32(model_and_adapters, vllm_engine, loop):
    model, adapters = model_and_adapters

    async def run(engine, close: bool) -> list[str]:
        texts = [(await engine.generate(r)).text for r in _requests()]
        if close:
            await engine.aclose()
        return texts

    hf = asyncio.run(run(HFEngine(model, adapters, CONFIG), close=True))
    vllm = loop.run_until_complete(run(vllm_engine, close=False))
    assert vllm_engine.cold_start_s > 0
    assert len(set(hf)) > 3  # adapters and prompts change the answers
    assert vllm == hf


def test_only_the_runtime_reaches_vllm(vllm_engine, model_and_adapters):
    _, adapters = model_and_adapters
    key = vllm_engine._api_key
    transport = httpx.HTTPTransport(uds=str(vllm_engine.socket_path))
    with httpx.Client(transport=transport, base_url="http://vllm", timeout=60) as client:
        sneaked = client.post("/v1/load_lora_adapter", json={"lora_name": "evil", "lora_path": str(adapters["one"])})
        anonymous = client.get("/v1/models")
        models = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert sneaked.status_code == 401 and anonymous.status_code == 401
    assert models.status_code == 200 and "evil" not in {m["id"] for m in models.json()["data"]}
    assert vllm_engine.socket_dir.stat().st_mode & 0o777 == 0o700  # only our user can reach the socket
    members = group_members(vllm_engine.child.pid)
    assert len(members) >= 2  # the engine core runs in the server's process group
    cmdline = Path(f"/proc/{vllm_engine.child.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--uds" in cmdline and b"--port" not in cmdline
    for pid in members:
        assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_vllm_loads_and_unloads_an_adapter_at_runtime(model_and_adapters, vllm_engine, loop, tmp_path: Path):
    from loras import make_lora

    model, _ = model_and_adapters

    async def run():
        ms = await vllm_engine.load_adapter("three", str(make_lora(model, tmp_path / "three", 3)))
        request = EngineRequest("x", SamplingParams(max_new_tokens=4), prompt="x =", adapter="three")
        out = await vllm_engine.generate(request)
        await vllm_engine.unload_adapter("three")
        return ms, out

    ms, out = loop.run_until_complete(run())
    assert ms > 0 and out.completion_tokens > 0 and "three" not in vllm_engine.adapters()


def test_a_killed_vllm_comes_back_with_its_adapters_and_close_leaves_no_process(model_and_adapters, vllm_engine,
                                                                                 loop, tmp_path: Path):
    from loras import make_lora

    model, _ = model_and_adapters
    four = make_lora(model, tmp_path / "four", 4)

    async def answers() -> list[str]:
        return [(await vllm_engine.generate(EngineRequest("k", SamplingParams(max_new_tokens=8), prompt=PROMPTS[0],
                                                          adapter=a))).text for a in (None, "one", "four")]

    loop.run_until_complete(vllm_engine.load_adapter("four", str(four)))  # loaded at runtime: must come back too
    before = loop.run_until_complete(answers())
    old = vllm_engine.child.pid
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()

    async def back() -> list[str]:
        deadline = time.monotonic() + 600
        while not (vllm_engine.restarts and await vllm_engine.health()):
            assert time.monotonic() < deadline, f"vLLM did not come back: {vllm_engine.log_tail()}"
            await asyncio.sleep(0.5)
        return await answers()

    after = loop.run_until_complete(back())
    log.warning("vLLM back %.1f s after SIGKILL (restart itself %.1f s)", time.monotonic() - killed,
                vllm_engine.last_restart_s)
    assert after == before and vllm_engine.restarts == 1 and vllm_engine.child.pid != old
    assert group_members(old) == []  # the dead server's engine core went with it
    new = vllm_engine.child.pid
    loop.run_until_complete(vllm_engine.aclose())
    assert group_members(new) == [] and not vllm_engine.socket_dir.exists()
