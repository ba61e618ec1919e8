"""The hf engine on the tiny model with two real LoRA adapters: batching, mixed adapters, streaming, slots."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from loras import make_lora

from runtime.config import EngineConfig
from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.hf_engine import HFEngine


def fp32(**settings) -> EngineConfig:
    """The engine config of these tests: greedy tokens compared exactly across batch shapes need fp32."""
    return EngineConfig(dtype="float32", **settings)


MESSAGES = [[{"role": "user", "content": t}] for t in ("def add(a, b):", "x = [1, 2, 3]", "for i in range(3):")]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"one": make_lora(tiny_model_dir, root / "one", 1), "two": make_lora(tiny_model_dir, root / "two", 2)}


def _req(i: int, adapter: str | None, n: int = 8, stop: tuple[str, ...] = ()) -> EngineRequest:
    return EngineRequest(f"r{i}", SamplingParams(max_new_tokens=n, stop=stop), messages=MESSAGES[i % 3],
                         adapter=adapter)


def test_a_mixed_adapter_batch_equals_each_adapter_alone(tiny_model_dir, adapters):
    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_batch_size=8, max_loras=2))
        names = [None, "one", "two", "one", "two", None]
        together = await asyncio.gather(*(engine.generate(_req(i, a)) for i, a in enumerate(names)))
        assert max(engine.batches) >= 2  # rows ran together, adapters mixed
        alone = [await engine.generate(_req(i, a)) for i, a in enumerate(names)]
        await engine.aclose()
        return together, alone

    together, alone = asyncio.run(run())
    assert [r.text for r in together] == [r.text for r in alone]
    assert together[1].text != together[0].text and together[1].text != together[2].text  # adapters matter


def test_streaming_yields_the_same_text_with_a_finish_reason(tiny_model_dir, adapters):
    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_loras=2))
        deltas = [d async for d in engine.stream(_req(0, "one", n=6))]
        full = await engine.generate(_req(0, "one", n=6))
        await engine.aclose()
        return deltas, full

    deltas, full = asyncio.run(run())
    assert "".join(d.text for d in deltas) == full.text
    assert deltas[-1].finish_reason == full.finish_reason and deltas[-1].completion_tokens == full.completion_tokens
    assert all(d.finish_reason is None for d in deltas[:-1])


def test_lru_slots_evict_the_least_recently_used_unpinned_adapter(tiny_model_dir, adapters, tmp_path):
    three = {**adapters, "three": make_lora(tiny_model_dir, tmp_path / "three", 3)}

    async def run():
        engine = HFEngine(tiny_model_dir, three, fp32(max_loras=2, pinned_adapters=["one"]))
        assert list(engine.slots.resident) == ["one", "two"]
        await engine.generate(_req(0, "three"))
        assert set(engine.slots.resident) == {"one", "three"}  # two was evicted, one is pinned
        await engine.generate(_req(0, "two"))
        assert set(engine.slots.resident) == {"one", "two"}
        await engine.aclose()

    asyncio.run(run())


def test_runtime_load_and_unload(tiny_model_dir, adapters, tmp_path):
    async def run():
        engine = HFEngine(tiny_model_dir, {"one": adapters["one"]}, fp32(max_loras=2))
        ms = await engine.load_adapter("extra", str(make_lora(tiny_model_dir, tmp_path / "extra", 9)))
        assert ms > 0 and "extra" in engine.adapters()
        assert (await engine.generate(_req(0, "extra"))).completion_tokens > 0
        await engine.unload_adapter("extra")
        assert "extra" not in engine.adapters() and "extra" not in engine.slots.resident
        await engine.aclose()

    asyncio.run(run())


def test_a_cancelled_stream_stops_its_row(tiny_model_dir, adapters):
    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_loras=2))
        stream = engine.stream(_req(0, None, n=200))
        first = await anext(stream)
        await stream.aclose()  # the client went away
        other = await engine.generate(_req(1, "one", n=4))  # the engine carries on
        await engine.aclose()
        return first, other

    first, other = asyncio.run(run())
    assert first.text and other.completion_tokens == 4


def test_unknown_adapter_and_long_prompt_are_request_errors(tiny_model_dir, adapters):
    from runtime.errors import BadRequestError, ModelNotFoundError

    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32())
        with pytest.raises(ModelNotFoundError):
            await engine.generate(_req(0, "nope"))
        long = EngineRequest("x", SamplingParams(max_new_tokens=10), prompt="word " * 5000)
        with pytest.raises(BadRequestError, match="exceeds the context"):
            await engine.generate(long)
        await engine.aclose()

    asyncio.run(run())
    assert json.dumps({"ok": True})


def test_a_full_queue_answers_queue_full(tiny_model_dir, adapters):
    from runtime.errors import QueueFullError

    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_batch_size=1), max_queue=2)
        results = await asyncio.gather(*(engine.generate(_req(i, None, n=3)) for i in range(5)),
                                       return_exceptions=True)
        await engine.aclose()
        return results

    results = asyncio.run(run())
    assert any(isinstance(r, QueueFullError) for r in results)
    assert any(not isinstance(r, Exception) for r in results)
    assert QueueFullError.status_code == 429


def test_ignore_eos_and_min_tokens_hold_the_answer_open(tiny_model_dir, adapters):
    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_loras=2))
        full = await engine.generate(_req(0, "one", n=8))
        stop = full.text[len(full.text) // 3:][:2]  # a stop string that greedy decoding meets early
        cut = await engine.generate(_req(0, "one", n=8, stop=(stop,)))
        held = await engine.generate(EngineRequest("h", SamplingParams(max_new_tokens=8, stop=(stop,), min_tokens=8),
                                                   messages=MESSAGES[0], adapter="one"))
        fixed = await asyncio.gather(*(engine.generate(EngineRequest(
            f"f{i}", SamplingParams(max_new_tokens=12, ignore_eos=True), messages=MESSAGES[i % 3], adapter=a))
            for i, a in enumerate([None, "one", "two"])))
        await engine.aclose()
        return full, cut, held, fixed

    full, cut, held, fixed = asyncio.run(run())
    assert stop_cut(cut, full) and held.completion_tokens == 8 and held.text.startswith(cut.text)
    assert [r.completion_tokens for r in fixed] == [12, 12, 12]
    assert {r.finish_reason for r in fixed} == {"length"}


def stop_cut(cut, full) -> bool:
    return cut.finish_reason == "stop" and len(cut.text) < len(full.text)


def test_prompts_are_tokenized_off_the_event_loop(tiny_model_dir, adapters):
    import threading

    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32())
        threads = []
        prepare = engine._prepare
        engine._prepare = lambda request: threads.append(threading.current_thread().name) or prepare(request)
        await engine.generate(_req(0, None, n=2))
        await engine.aclose()
        return threads

    assert asyncio.run(run()) == ["hf-engine-prep_0"]


@pytest.mark.parametrize("first", [True, False])
def test_a_malformed_adapter_is_refused_and_leaves_the_model_as_it_was(tiny_model_dir, adapters, tmp_path, first):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from runtime.errors import BadRequestError

    lying = shutil.copytree(adapters["two"], tmp_path / "lying")  # config says rank 8, weights are rank 4
    config = json.loads((lying / "adapter_config.json").read_text())
    (lying / "adapter_config.json").write_text(json.dumps(config | {"r": 8}))
    wrong_base = shutil.copytree(adapters["two"], tmp_path / "wrong")  # right rank, wrong input width
    weights = load_file(wrong_base / "adapter_model.safetensors")
    save_file({k: torch.zeros(v.shape[0], v.shape[1] + 3) if ".lora_A." in k else v for k, v in weights.items()},
              wrong_base / "adapter_model.safetensors")

    async def run():
        engine = HFEngine(tiny_model_dir, {} if first else {"one": adapters["one"]}, fp32(max_loras=3))
        before = (sum(p.numel() for p in engine.runner.model.parameters()), type(engine.runner.model).__name__)
        answer = (await engine.generate(_req(0, None, n=6))).text
        with pytest.raises(BadRequestError, match="rank 8 in adapter_config.json"):
            await engine.load_adapter("lying", str(lying))
        with pytest.raises(BadRequestError, match="does not fit this model"):
            await engine.load_adapter("wrong", str(wrong_base))
        after = (sum(p.numel() for p in engine.runner.model.parameters()), type(engine.runner.model).__name__)
        again = (await engine.generate(_req(0, None, n=6))).text
        names = set(engine.adapters())
        await engine.load_adapter("two", str(adapters["two"]))  # a good adapter still loads afterwards
        await engine.aclose()
        return before, after, answer, again, names

    before, after, answer, again, names = asyncio.run(run())
    assert after == before and again == answer and not names & {"lying", "wrong"}


# ------------------------------------------------------------------------------------- continuous batching
def _gate(engine: HFEngine):
    """Hold the worker between two steps until the returned event is set (requests queue up meanwhile)."""
    import threading

    event = threading.Event()
    engine._between_steps(event.wait, "__gate__")
    return event


async def _queued(engine: HFEngine, n: int) -> None:
    while engine.queue_depth() < n:
        await asyncio.sleep(0.005)


def _fixed(i: int, adapter: str | None, n: int, **sampling) -> EngineRequest:
    return EngineRequest(f"c{i}", SamplingParams(max_new_tokens=n, ignore_eos=True, **sampling),
                         messages=MESSAGES[i % 3], adapter=adapter)


def test_a_request_arriving_mid_answer_starts_and_ends_before_the_long_one(tiny_model_dir, adapters):
    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_loras=2))
        events: list[str] = []

        async def follow(name: str, request: EngineRequest) -> str:
            text = ""
            async for delta in engine.stream(request):
                events.append(f"{name} first" if not text and delta.text else f"{name} step")
                text += delta.text
            events.append(f"{name} end")
            return text

        long = asyncio.ensure_future(follow("long", _fixed(0, "one", 64)))
        while "long first" not in events:
            await asyncio.sleep(0.005)
        gate = _gate(engine)
        short = asyncio.ensure_future(follow("short", _fixed(1, "two", 4)))
        await _queued(engine, 1)
        gate.set()
        texts = await asyncio.gather(long, short)
        alone = await engine.generate(_fixed(1, "two", 4))
        await engine.aclose()
        return events, texts, alone, list(engine.batches)

    events, (_, short), alone, batches = asyncio.run(run())
    assert events.index("short first") < events.index("long end")
    assert events.index("short end") < events.index("long end")  # the short row left while the long one ran
    assert short == alone.text and 2 in batches and batches[-1] == 1


def test_mixed_adapters_and_sampling_in_one_running_batch_equal_each_alone(tiny_model_dir, adapters):
    requests = [_fixed(0, None, 10), _fixed(1, "one", 6), _fixed(2, "two", 12, temperature=0.9, top_p=0.8, seed=7),
                EngineRequest("m", SamplingParams(max_new_tokens=9, min_tokens=5), messages=MESSAGES[0],
                              adapter="two"),
                _fixed(4, "one", 8, temperature=1.3, seed=11), _fixed(5, None, 3)]

    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_batch_size=8, max_loras=2))
        gate = _gate(engine)
        together = asyncio.gather(*(engine.generate(r) for r in requests))
        await _queued(engine, len(requests))
        gate.set()
        together = await together
        peak = max(engine.batches)
        alone = [await engine.generate(r) for r in requests]
        await engine.aclose()
        return together, alone, peak

    together, alone, peak = asyncio.run(run())
    assert peak == len(requests)  # every row decoded in the same steps
    assert [(r.text, r.completion_tokens) for r in together] == [(r.text, r.completion_tokens) for r in alone]
    assert [r.completion_tokens for r in together][:3] == [10, 6, 12] and together[3].completion_tokens >= 5


def test_a_cancelled_row_leaves_and_the_others_carry_on(tiny_model_dir, adapters):
    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_loras=2))
        gate = _gate(engine)
        gone = engine.stream(_fixed(0, "one", 200))
        first = asyncio.ensure_future(anext(gone))
        kept = asyncio.ensure_future(engine.generate(_fixed(1, None, 40)))
        await _queued(engine, 2)
        gate.set()
        await first
        await gone.aclose()  # the client went away
        result = await kept
        while engine.running():  # the worker drops finished rows right after their last delta
            await asyncio.sleep(0.002)
        steps = list(engine.batches)
        alone = await engine.generate(_fixed(1, None, 40))
        await engine.aclose()
        return result, alone, steps

    result, alone, steps = asyncio.run(run())
    assert result.text == alone.text and result.completion_tokens == 40
    assert len(steps) < 60 and steps.count(2) < 10  # the cancelled row left long before its 200 tokens


def test_an_engine_closed_mid_answer_aborts_it_and_gives_its_share_of_the_cores_back(tiny_model_dir, adapters):
    """A working engine counts in the split of the cores (threads.TEAMS); closed mid-answer it must stop counting,
    or every other engine in the process would run on a smaller share for good."""
    from runtime.engines.threads import TEAMS

    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32())
        idle = TEAMS._working
        long = asyncio.ensure_future(engine.generate(_fixed(0, "one", 200)))
        while not engine.batches:  # a step ran: the worker works
            await asyncio.sleep(0.002)
        working = TEAMS._working
        await engine.aclose()
        result = await long
        for _ in range(500):  # the worker leaves its loop at the next check
            if TEAMS._working == idle:
                break
            await asyncio.sleep(0.01)
        return idle, working, TEAMS._working, result

    idle, working, after, result = asyncio.run(run())
    assert working == idle + 1 and after == idle
    assert result.finish_reason == "abort" and result.completion_tokens < 200


def test_a_full_queue_answers_queue_full_while_rows_run(tiny_model_dir, adapters):
    from runtime.errors import QueueFullError

    async def run():
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_batch_size=1), max_queue=1)
        gate = _gate(engine)
        first = asyncio.ensure_future(engine.generate(_fixed(0, None, 3)))
        await _queued(engine, 1)
        with pytest.raises(QueueFullError):
            await engine.generate(_fixed(1, None, 3))
        gate.set()
        result = await first
        await engine.aclose()
        return result

    assert asyncio.run(run()).completion_tokens == 3


def test_an_adapter_loads_while_a_request_runs_and_is_built_beside_the_model(tiny_model_dir, adapters, tmp_path):
    async def run():
        engine = HFEngine(tiny_model_dir, {"one": adapters["one"]}, fp32(max_loras=3))
        alone = await engine.generate(_fixed(0, "one", 48))
        running = asyncio.ensure_future(engine.generate(_fixed(0, "one", 48)))
        while not engine.running():
            await asyncio.sleep(0.002)
        await engine.load_adapter("hot", str(adapters["two"]))
        still = engine.running()  # the load did not wait for the running request
        loaded = await engine.generate(_fixed(1, "hot", 6))
        result = await running
        await engine.aclose()
        return alone, result, still, loaded

    alone, result, still, loaded = asyncio.run(run())
    assert still == 1 and result.text == alone.text and loaded.completion_tokens == 6


def test_a_hot_loaded_adapter_answers_like_one_loaded_at_start(tiny_model_dir, adapters):
    async def run(at_start: bool):
        known = {"one": adapters["one"], **({"two": adapters["two"]} if at_start else {})}
        engine = HFEngine(tiny_model_dir, known, fp32(max_loras=3))
        if not at_start:
            await engine.load_adapter("two", str(adapters["two"]))
        texts = [(await engine.generate(_req(i, "two"))).text for i in range(3)]
        lock = engine.slots.lock_ms.get("two")
        training = [n for n, m in engine.runner.model.named_modules() if m.training]
        await engine.aclose()
        return texts, lock, training

    (cold, _, _), (hot, lock, training) = asyncio.run(run(True)), asyncio.run(run(False))
    assert hot == cold and lock is not None
    assert training == []  # the hot load set its layers (dropout included) in inference mode, as the model is


def test_the_engine_runs_where_device_says_and_refuses_a_gpu_it_does_not_have(tiny_model_dir, monkeypatch):
    from runtime import hardware
    from runtime.errors import BadRequestError

    monkeypatch.setattr(hardware, "gpu_present", lambda: False)
    engine = HFEngine(tiny_model_dir, config=EngineConfig(device="auto", dtype="float32"))
    assert engine.runner.device == "cpu" and engine.runner.model.device.type == "cpu"
    asyncio.run(engine.aclose())
    with pytest.raises(BadRequestError, match="no GPU") as refused:
        HFEngine(tiny_model_dir, config=EngineConfig(device="cuda"))
    assert "engine.device" in refused.value.fix
    with pytest.raises(BadRequestError, match="unknown device"):
        hardware.resolve_device("tpu")


def test_one_adapter_slot_evicts_and_reloads_in_turn_and_answers_as_two_slots(tiny_model_dir, adapters):
    """Evicting the only resident adapter left PEFT's active adapter pointing at it, and every later forward
    failed looking its config up ('generation failed: one')."""
    order = ["one", "two", None, "one", "two"]

    async def run(slots: int) -> list[str]:
        engine = HFEngine(tiny_model_dir, adapters, fp32(max_loras=slots))
        try:
            return [(await engine.generate(_req(i, name))).text for i, name in enumerate(order)]
        finally:
            await engine.aclose()

    assert asyncio.run(run(1)) == asyncio.run(run(2))
