"""Real vLLM (the CPU build here) serves the tiny model and two LoRA experts, and its greedy outputs equal the
hf engine's in float32, for the base model and for each adapter."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
from tiny import build_tiny_model_dir

from runtime.config import EngineConfig
from runtime.engines.base import EngineRequest
from runtime.engines.hf import SamplingParams
from runtime.engines.hf_engine import HFEngine

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
PROMPTS = ["def add(a, b):\n", "import os\n\nfor root, dirs, files in", "class Stack:\n    def push(self, x):"]


@pytest.fixture(scope="module")
def model_and_adapters(tmp_path_factory: pytest.TempPathFactory):
    from loras import make_lora

    root = tmp_path_factory.mktemp("vllm")
    model = build_tiny_model_dir(root / "tiny-h64", heads=1)
    return model, {"one": make_lora(model, root / "one", 1), "two": make_lora(model, root / "two", 2)}


def _requests() -> list[EngineRequest]:
    return [EngineRequest(f"{a}-{i}", SamplingParams(max_new_tokens=12), prompt=p, adapter=a)
            for a in (None, "one", "two") for i, p in enumerate(PROMPTS)]


def test_vllm_greedy_outputs_equal_hf_in_fp32(model_and_adapters):
    from runtime.engines.vllm import VLLMEngine

    model, adapters = model_and_adapters
    config = EngineConfig(kind="vllm", dtype="float32", max_loras=2, max_lora_rank=8, max_model_len=512)

    async def run(engine) -> list[str]:
        results = [await engine.generate(r) for r in _requests()]
        await engine.aclose()
        return [r.text for r in results]

    hf = asyncio.run(run(HFEngine(model, adapters, config)))
    vllm_engine = VLLMEngine(model, adapters, config)
    assert vllm_engine.cold_start_s > 0
    vllm = asyncio.run(run(vllm_engine))
    assert len(set(hf)) > 3  # adapters and prompts change the answers
    assert vllm == hf


def test_vllm_loads_and_unloads_an_adapter_at_runtime(model_and_adapters, tmp_path: Path):
    from loras import make_lora

    from runtime.engines.vllm import VLLMEngine

    model, adapters = model_and_adapters
    engine = VLLMEngine(model, {"one": adapters["one"]},
                        EngineConfig(kind="vllm", dtype="float32", max_loras=2, max_lora_rank=8, max_model_len=512))

    async def run():
        ms = await engine.load_adapter("three", str(make_lora(model, tmp_path / "three", 3)))
        out = await engine.generate(EngineRequest("x", SamplingParams(max_new_tokens=4), prompt="x =", adapter="three"))
        await engine.unload_adapter("three")
        await engine.aclose()
        return ms, out

    ms, out = asyncio.run(run())
    assert ms > 0 and out.completion_tokens > 0
