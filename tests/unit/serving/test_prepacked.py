"""oneDNN-prepacked bf16 linears (runtime/engines/prepacked.py): the stock numbers, the weights held once, and an
engine on them that answers as one without them, adapters (loaded at start, hot-loaded, mixed) and folding
included."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from loras import make_lora

from runtime.config import EngineConfig
from runtime.engines import hf, slots
from runtime.engines.adaptive import weight_bytes
from runtime.engines.base import EngineRequest, SamplingParams
from runtime.engines.hf_engine import HFEngine
from runtime.engines.prepacked import prepack_linears, prepackable, prepacked_bytes

torch = pytest.importorskip("torch")


def _load(model_dir: Path, dtype: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"one": make_lora(tiny_model_dir, root / "one", 1), "two": make_lora(tiny_model_dir, root / "two", 2)}


def test_prepacked_linears_give_the_stock_logits_and_hold_each_weight_once(tiny_model_dir):
    stock, model = _load(tiny_model_dir, "bfloat16"), _load(tiny_model_dir, "bfloat16")
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    dense = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    shared = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    before = weight_bytes(model)
    assert prepackable(model) and prepack_linears(model) == len(linears)
    assert prepack_linears(model) == 0  # packed once
    ids = torch.randint(0, model.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, stock(input_ids=ids).logits)
    assert prepacked_bytes(model) == dense
    emptied = [m for m in linears if m.weight.numel() == 0]
    # a head tied to the input embeddings keeps the dense table for them (and a packed copy for itself)
    assert len(emptied) == len(linears) - shared and model.get_input_embeddings().weight.numel() > 0
    assert weight_bytes(model) == before + shared * model.get_output_embeddings().weight.numel() * 2


def test_a_model_built_in_memory_is_prepacked_with_its_other_weights_intact(tiny_model_dir):
    """The dropped weights' pages go back to the OS (madvise): on the heap they read as zeros afterwards, so only
    pages no other tensor uses may go (a tied table is kept whole)."""
    import copy

    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir), dtype=torch.bfloat16).eval()
    stock = copy.deepcopy(model)
    table = model.get_input_embeddings().weight.clone()
    assert prepack_linears(model) > 0
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, stock(input_ids=ids).logits)
    assert torch.equal(model.get_input_embeddings().weight, table)


def test_only_bf16_on_a_cpu_is_prepacked(tiny_model_dir):
    assert not prepackable(_load(tiny_model_dir, "float32"))  # oneDNN's packed fp32 is not MKL's numbers


def _req(i: int, adapter: str | None) -> EngineRequest:
    text = ("def add(a, b):", "x = [1, 2, 3]", "for i in range(3):")[i % 3]
    return EngineRequest(f"r{i}", SamplingParams(max_new_tokens=8, ignore_eos=True),
                         messages=[{"role": "user", "content": text}], adapter=adapter)


def test_an_engine_on_prepacked_weights_answers_as_one_without_them(tiny_model_dir, adapters, monkeypatch):
    names = [None, "one", "two", "one", "two", None]

    async def run() -> tuple[list[str], list[str], int, int]:
        engine = HFEngine(tiny_model_dir, {"one": adapters["one"]},
                          EngineConfig(dtype="bfloat16", max_batch_size=8, max_loras=2))
        await engine.load_adapter("two", str(adapters["two"]))  # hot-loaded onto the (packed) served linears
        together = await asyncio.gather(*(engine.generate(_req(i, a)) for i, a in enumerate(names)))
        alone = [await engine.generate(_req(i, a)) for i, a in enumerate(names)]
        served, folded = prepacked_bytes(engine.runner.model), prepacked_bytes(engine.slots.fold("one"))
        await engine.aclose()
        return [r.text for r in together], [r.text for r in alone], served, folded

    together, alone, served, folded = asyncio.run(run())
    assert served > 0 and folded > 0  # the served model and adaptive's folded copies are both packed
    assert together == alone
    monkeypatch.setattr(hf, "prepack", lambda model: model)
    monkeypatch.setattr(slots, "prepack", lambda model: model)
    stock_together, stock_alone, served, folded = asyncio.run(run())
    assert served == folded == 0
    assert together == stock_together and alone == stock_alone
    assert len(set(together)) > 1  # adapters matter


def test_an_adapter_with_modules_to_save_keeps_the_dense_weights_or_is_refused_hot_loaded(tiny_model_dir, adapters,
                                                                                          tmp_path):
    """PEFT copies a ``modules_to_save`` layer whole: the copy of a packed layer would serve the packed original."""
    from runtime.errors import BadRequestError

    saved = make_lora(tiny_model_dir, tmp_path / "saved", 3, target_modules=["q_proj", "v_proj"],
                      modules_to_save=["o_proj"])

    async def kept() -> str:
        engine = HFEngine(tiny_model_dir, {"saved": saved}, EngineConfig(dtype="bfloat16", max_loras=2))
        try:
            assert not engine.runner.pack and prepacked_bytes(engine.runner.model) == 0
            return (await engine.generate(_req(0, "saved"))).text
        finally:
            await engine.aclose()

    assert asyncio.run(kept())

    async def refused() -> None:
        engine = HFEngine(tiny_model_dir, {"one": adapters["one"]}, EngineConfig(dtype="bfloat16", max_loras=2))
        try:
            assert prepacked_bytes(engine.runner.model) > 0
            with pytest.raises(BadRequestError, match="modules_to_save") as caught:
                await engine.load_adapter("saved", str(saved))
            assert "engine.prepack: false" in caught.value.fix
            assert (await engine.generate(_req(1, "one"))).text  # the model is as it was
        finally:
            await engine.aclose()

    asyncio.run(refused())


def test_a_dora_adapter_runs_alone_on_dense_weights_and_the_engine_refuses_it(tiny_model_dir, tmp_path):
    from runtime.engines.hf import HFRunner, read_adapter
    from runtime.errors import BadRequestError

    dora = make_lora(tiny_model_dir, tmp_path / "dora", 3, use_dora=True)
    runner = HFRunner(tiny_model_dir, dora, dtype="bfloat16")  # a runner alone: no mixed batches
    assert not runner.pack and prepacked_bytes(runner.model) == 0
    with pytest.raises(BadRequestError, match="DoRA") as caught:  # the engine mixes adapters by row
        read_adapter(dora)
    assert "merge" in caught.value.fix
