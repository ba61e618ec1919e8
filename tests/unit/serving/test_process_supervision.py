"""The vllm engine's supervision, with a stand-in for vLLM's server (a tiny app on the same unix socket, asking
for the same key): a killed server comes back with every adapter, those loaded at runtime included, and close
leaves no process of its group. The real vLLM does the same in tests/integration/test_vllm_engine.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import runtime.engines.vllm as vllm_module
from runtime.config import EngineConfig
from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.vllm import VLLMEngine
from runtime.process import group_members

STAND_IN = """
import json, os, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

argv = sys.argv[1:]
adapters = argv[argv.index("--lora-modules") + 1:] if "--lora-modules" in argv else []

async def health(request):
    return JSONResponse({})

async def v1(request):
    if request.headers.get("authorization") != "Bearer " + os.environ["VLLM_API_KEY"]:
        return JSONResponse({"error": "Unauthorized"}, 401)
    if request.url.path.endswith("lora_adapter"):
        return JSONResponse({})
    text = json.dumps({"pid": os.getpid(), "adapters": sorted(adapters)})
    return JSONResponse({"choices": [{"text": text, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

app = Starlette(routes=[Route("/health", health), Route("/v1/{path:path}", v1, methods=["POST"])])
uvicorn.run(app, uds=argv[argv.index("--uds") + 1], log_level="warning")
"""


@pytest.fixture()
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)

    def command(model_path, name, adapters, config, uds, gpu) -> list[str]:
        lora = ["--lora-modules", *(f"{k}={v}" for k, v in adapters.items())] if adapters else []
        return [sys.executable, str(script), "--uds", uds, *lora]

    monkeypatch.setattr(vllm_module, "vllm_command", command)
    monkeypatch.setattr(vllm_module, "gpu_present", lambda: False)
    return tmp_path


def _adapter(root: Path, name: str) -> Path:
    (root / name).mkdir()
    (root / name / "adapter_config.json").write_text(json.dumps({"r": 4}))
    return root / name


async def _served(engine: VLLMEngine) -> dict:
    result = await engine.generate(EngineRequest("r", SamplingParams(max_new_tokens=1), prompt="x"))
    return json.loads(result.text)


async def _back(engine: VLLMEngine, restarts: int) -> None:
    deadline = time.monotonic() + 60
    while not (engine.restarts >= restarts and await engine.health()):
        assert time.monotonic() < deadline, f"the stand-in did not come back: {engine.log_tail()}"
        await asyncio.sleep(0.05)


def test_a_killed_server_comes_back_with_every_adapter_and_close_leaves_no_process(stand_in: Path):
    one, two = _adapter(stand_in, "one"), _adapter(stand_in, "two")

    async def run() -> tuple[dict, dict, VLLMEngine]:
        engine = VLLMEngine(stand_in / "model", {"one": one}, EngineConfig(kind="vllm"), restart_backoff_s=0.05)
        await engine.load_adapter("two", str(two))
        first = await _served(engine)
        os.kill(first["pid"], signal.SIGKILL)
        await _back(engine, restarts=1)
        second = await _served(engine)
        await engine.aclose()
        return first, second, engine

    first, second, engine = asyncio.run(run())
    assert first["adapters"] == [f"one={one}"]
    assert second["pid"] != first["pid"] and second["adapters"] == [f"one={one}", f"two={two}"]
    assert engine.restarts == 1 and engine.last_restart_s is not None
    assert group_members(first["pid"]) == group_members(second["pid"]) == []
    assert not engine.socket_dir.exists()


def test_an_adapter_whose_files_are_gone_is_left_out_of_the_restart(stand_in: Path):
    one, two = _adapter(stand_in, "one"), _adapter(stand_in, "two")

    async def run() -> dict:
        engine = VLLMEngine(stand_in / "model", {"one": one, "two": two}, EngineConfig(kind="vllm"),
                            restart_backoff_s=0.05)
        (two / "adapter_config.json").unlink()
        os.kill(engine.child.pid, signal.SIGKILL)
        await _back(engine, restarts=1)
        served = await _served(engine)
        await engine.aclose()
        return served

    assert asyncio.run(run())["adapters"] == [f"one={one}"]


def test_health_is_false_while_the_server_is_down(stand_in: Path):
    async def run() -> tuple[bool, bool, bool]:
        engine = VLLMEngine(stand_in / "model", {}, EngineConfig(kind="vllm"), restart_backoff_s=30)
        up = await engine.health()
        engine.child.process.kill()
        deadline = time.monotonic() + 30
        while not engine._restarting.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        down = await engine.health()
        await engine.aclose()  # also ends the 30 s wait before the restart
        return up, down, engine._watcher.is_alive()

    up, down, watching = asyncio.run(run())
    assert up and not down and not watching
