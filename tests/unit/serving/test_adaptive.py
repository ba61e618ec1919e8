"""engine.adaptive on the tiny model: a dominant adapter moves to a folded copy and back, answers unchanged."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from loras import make_lora

from runtime.config import AdaptiveConfig, EngineConfig
from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.hf_engine import HFEngine

MESSAGES = [[{"role": "user", "content": t}] for t in ("def add(a, b):", "x = [1, 2, 3]", "for i in range(3):")]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"one": make_lora(tiny_model_dir, root / "one", 1), "two": make_lora(tiny_model_dir, root / "two", 2)}


def _engine(model: Path, adapters: dict[str, Path], **adaptive) -> HFEngine:
    settings = AdaptiveConfig(**{"window": 4, "min_requests": 2, **adaptive}) if adaptive is not None else None
    return HFEngine(model, adapters, EngineConfig(dtype="float32", max_loras=2, adaptive=settings))


def _req(i: int, adapter: str | None, n: int = 8) -> EngineRequest:
    return EngineRequest(f"r{i}", SamplingParams(max_new_tokens=n, ignore_eos=True), messages=MESSAGES[i % 3],
                         adapter=adapter)


async def _until(engine: HFEngine, mode: str) -> None:
    """Wait (no time limit asserted: pytest's own timeout guards) until the placement reaches ``mode``."""
    while engine.placement_status()["mode"] != mode:
        await asyncio.sleep(0.01)


async def _lora_answers(model: Path, adapters: dict[str, Path], requests: list[EngineRequest]) -> list[str]:
    engine = HFEngine(model, adapters, EngineConfig(dtype="float32", max_loras=2))
    texts = [(await engine.generate(r)).text for r in requests]
    await engine.aclose()
    return texts


def test_a_folded_adapter_answers_exactly_as_its_lora(tiny_model_dir, adapters):
    requests = [_req(i, "one", 12) for i in range(3)] + [_req(3, "two"), _req(4, None)]

    async def run():
        engine = _engine(tiny_model_dir, adapters)
        for i in range(2):
            await engine.generate(_req(i, "one", 2))
        await _until(engine, "folded")
        together = await asyncio.gather(*(engine.generate(r) for r in requests))  # folded rows beside LoRA rows
        status = engine.placement_status()
        await engine.aclose()
        return [r.text for r in together], status

    texts, status = asyncio.run(run())
    assert status["adapter"] == "one" and status["folded_rows"] >= 3 and status["folds"] == 1
    assert texts == asyncio.run(_lora_answers(tiny_model_dir, adapters, requests))
    assert texts[0] != asyncio.run(_lora_answers(tiny_model_dir, {}, [_req(0, None, 12)]))[0]  # the adapter matters


def test_a_row_in_flight_during_the_fold_keeps_its_model_and_tokens(tiny_model_dir, adapters):
    long = _req(0, "one", 160)

    async def run():
        engine = _engine(tiny_model_dir, adapters)
        built = threading.Event()
        fold = engine.slots.fold
        engine.placement._build = lambda name: (fold(name), built.set())[0]
        running = asyncio.ensure_future(engine.generate(long))
        while not engine.running():
            await asyncio.sleep(0.002)
        await engine.generate(_req(1, "one", 2))  # the second request of two for `one`: the fold starts
        hold = threading.Event()
        engine._post(hold.wait)  # the worker waits between two steps while the copy is built
        await asyncio.get_running_loop().run_in_executor(None, built.wait)
        in_flight = not running.done()
        hold.set()
        await _until(engine, "folded")
        after = await engine.generate(_req(2, "one", 6))
        result = await running
        status = engine.placement_status()
        await engine.aclose()
        return in_flight, result.text, after.text, status

    in_flight, text, after, status = asyncio.run(run())
    assert in_flight and status["folded_rows"] == 1  # the long row stayed on LoRA; the newcomer ran folded
    assert [text, after] == asyncio.run(_lora_answers(tiny_model_dir, adapters, [long, _req(2, "one", 6)]))


def test_placement_goes_back_to_lora_when_traffic_evens_out(tiny_model_dir, adapters):
    async def run():
        engine = _engine(tiny_model_dir, adapters)
        for i in range(2):
            await engine.generate(_req(i, "one", 2))
        await _until(engine, "folded")
        modes = []
        for i, name in enumerate(["two", None, "two"]):  # shares of `one`: 3/4, 2/4, 1/4 of the window of 4
            await engine.generate(_req(i, name, 2))
            modes.append(engine.placement_status()["mode"])
        back = (await engine.generate(_req(0, "one", 8))).text
        status = engine.placement_status()
        await engine.aclose()
        return modes, back, status

    modes, back, status = asyncio.run(run())
    assert modes == ["folded", "folded", "lora"]  # 2/4 is between the thresholds: no flap back at once
    assert status["unfolds"] == 1 and status["folded_rows"] == 0  # the copy was dropped
    assert back == asyncio.run(_lora_answers(tiny_model_dir, adapters, [_req(0, "one", 8)]))[0]


def test_no_fold_over_the_memory_budget(tiny_model_dir, adapters):
    async def run():
        engine = _engine(tiny_model_dir, adapters, memory_mb=0.01)  # the tiny model's copy is ~0.2 MB
        texts = [(await engine.generate(_req(i, "one", 4))).text for i in range(4)]
        status = engine.placement_status()
        await engine.aclose()
        return texts, status

    texts, status = asyncio.run(run())
    assert status["mode"] == "lora" and status["folds"] == 0 and "over adaptive.memory_mb" in status["note"]
    assert status["copy_mb"] > 0.01 and status["shares"] == {"one": 1.0}


def test_adaptive_settings_need_a_gap_between_the_thresholds():
    with pytest.raises(ValueError, match="must be below fold_share"):
        AdaptiveConfig(fold_share=0.5, unfold_share=0.5)
    assert EngineConfig(adaptive=True).adaptive == AdaptiveConfig() and EngineConfig().adaptive is None


def test_the_debug_route_shows_each_adaptive_engines_placement():
    from serving_fakes import make_client

    client, engines = make_client()
    engines["/models/base"].placement_status = lambda: {"mode": "folded", "adapter": "gen-lora"}
    body = client.get("/v1/debug/placement").json()
    assert body == {"base": {"mode": "folded", "adapter": "gen-lora"}}  # the merged engine is not adaptive
