"""The grouped LoRA forward (runtime/engines/lora.py) against PEFT's own mixed-adapter forward, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loras import make_lora

from runtime.engines import packed_lora
from runtime.engines.hf import install_adapter, read_adapter
from runtime.engines.lora import BASE, GroupedLora

ROWS = ["r2", BASE, "r8", "q", "r2", BASE, "q"]  # three adapters of ranks 2, 8 and 4 (q: attention q/v only)


def _partial_lora(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def paths(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("grouped")
    return {"r2": make_lora(tiny_model_dir, root / "r2", 1, rank=2), "q": _partial_lora(tiny_model_dir, root / "q"),
            "r8": make_lora(tiny_model_dir, root / "r8", 2, rank=8),
            "r16": make_lora(tiny_model_dir, root / "r16", 3, rank=16)}


def _served(tiny_model_dir: Path, paths: dict[str, Path], names: list[str]):
    """The tiny model in fp32 with ``names`` installed as the engine installs them, and its grouped forward."""
    from transformers import AutoModelForCausalLM

    model, lora = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), GroupedLora()
    for name in names:
        model = install_adapter(model, name, *read_adapter(paths[name], model.config))
        lora.sync(model)
    return model, lora


def _inputs(rows: int, width: int) -> dict:
    return {"input_ids": torch.randint(3, 500, (rows, width), generator=torch.Generator().manual_seed(width))}


@torch.inference_mode()
def test_the_grouped_forward_equals_peft_for_mixed_ranks_targets_and_base_rows(tiny_model_dir, paths):
    model, lora = _served(tiny_model_dir, paths, ["r2", "r8", "q"])
    assert lora.grouped
    for width in (1, 5):  # a decode step and a prompt chunk
        inputs = _inputs(len(ROWS), width)
        peft = model(**inputs, adapter_names=ROWS).logits
        grouped = lora.forward(model, ROWS, **inputs).logits
        torch.testing.assert_close(grouped, peft, atol=1e-5, rtol=1e-5)
        one = lora.forward(model, ["r8"], **_inputs(1, width)).logits  # one row, one slot: no gather
        torch.testing.assert_close(one, model(**_inputs(1, width), adapter_names=["r8"]).logits, atol=1e-5, rtol=1e-5)
    alone = lora.forward(model, [BASE] * len(ROWS), **inputs).logits
    changed = [not torch.allclose(g, a) for g, a in zip(grouped, alone, strict=True)]
    assert changed == [name != BASE for name in ROWS]  # each adapter changes its rows' logits, base rows are as-is


@torch.inference_mode()
def test_a_hot_load_then_unload_leaves_the_outputs_as_before(tiny_model_dir, paths):
    model, lora = _served(tiny_model_dir, paths, ["r2", "q"])
    rows, inputs = ["r2", BASE, "q", "r2"], _inputs(4, 3)
    before = lora.forward(model, rows, **inputs).logits
    model = install_adapter(model, "r16", *read_adapter(paths["r16"], model.config))  # a larger rank: stacks grow
    lora.sync(model)
    during = lora.forward(model, [*rows, "r16"], **_inputs(5, 3)).logits
    torch.testing.assert_close(during[:4], before, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(during[4], model(**_inputs(5, 3), adapter_names=[*rows, "r16"]).logits[4],
                               atol=1e-5, rtol=1e-5)
    model.delete_adapter("r16")
    lora.sync(model)
    assert set(lora.slots) == {"r2", "q"}
    torch.testing.assert_close(lora.forward(model, rows, **inputs).logits, before, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="r16 not resident"):
        lora.forward(model, ["r16"], **_inputs(1, 3))


@torch.inference_mode()
def test_a_freed_slot_is_reused_by_the_next_adapter_without_stale_weights(tiny_model_dir, paths):
    model, lora = _served(tiny_model_dir, paths, ["r8", "q"])
    model.delete_adapter("r8")
    lora.sync(model)
    model = install_adapter(model, "r2", *read_adapter(paths["r2"], model.config))  # rank 2 into r8's slot
    lora.sync(model)
    assert sorted(lora.slots.values()) == [1, 2]
    inputs = _inputs(3, 2)
    torch.testing.assert_close(lora.forward(model, ["r2", "q", BASE], **inputs).logits,
                               model(**inputs, adapter_names=["r2", "q", BASE]).logits, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_a_layer_type_it_does_not_group_keeps_peft_s_forward(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                   LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], init_lora_weights=False)
                   ).save_pretrained(tmp_path / "embed")  # a LoRA on the embedding table: PEFT's Embedding layer
    model, lora = _served(tiny_model_dir, {"embed": tmp_path / "embed"}, ["embed"])
    assert not lora.grouped and not lora.slots
    inputs = _inputs(2, 2)
    mixed = lora.forward(model, ["embed", BASE], **inputs).logits
    torch.testing.assert_close(mixed, model(**inputs, adapter_names=["embed", BASE]).logits)
    assert not torch.allclose(mixed[0], model(**inputs, adapter_names=[BASE, BASE]).logits[0])


def _random_stack(fan_out: int, seed: int, blocked: bool = True):
    """Three slots of rank 16 over Qwen2.5-0.5B's 896 inputs, random A and B; skips where blocks are wanted and this
    CPU's float32 GEMMs do not round alike in them (the per-row path serves there)."""
    from runtime.engines import lora

    if blocked and not (lora._blocked(896, 16) and lora._blocked(16, fan_out)):
        pytest.skip("this CPU's float32 GEMMs do not round alike in blocks: the per-row path serves")
    torch.manual_seed(seed)
    stack = lora._Stack(3, 16, 896, fan_out)
    stack.a.normal_(0, 0.02)
    stack.b.normal_(0, 0.02)
    return stack


def _packed_stack(stack):
    """``stack``'s slots as oneDNN-packed bf16 pairs (what a prepacked bf16 model's LoRA layers hold)."""

    fan_in, rank, fan_out = stack.a.shape[1], stack.a.shape[2], stack.b.shape[2]
    packed = packed_lora.PackedStack(fan_in, fan_out, stack.a.shape[0], rank)
    for slot in range(1, stack.a.shape[0]):
        packed.put(slot, stack.a[slot].t(), stack.b[slot].t())
    return packed


@pytest.mark.parametrize("kind", ["blocked", "per-row", "packed"])
@pytest.mark.parametrize("slots", [[1] * 8, [1, 2, 0, 1, 2, 2, 1, 0], [2], [1, 2, 1], [0, 2] * 7 + [1]])
def test_each_rows_lora_term_equals_the_row_alone_bit_for_bit(slots, kind, monkeypatch):
    """A float32 GEMM over 8 rows rounds other sums than over 1 on the CPU: each token's LoRA term is computed in
    GEMMs of 4-row blocks (where the probe finds them alike whatever the row count), a matmul of its own, or
    oneDNN's packed bf16 product (where the probe finds it alike at any row count), so whoever else decodes, and
    whatever prompt chunks ride in the step, a row gets what it gets alone."""
    from runtime.engines import lora
    from runtime.engines.lora import _Rows

    if kind == "per-row":
        monkeypatch.setattr(lora, "_blocked", lambda fan_in, fan_out: False)
    stack = _random_stack(4864, seed=0, blocked=kind == "blocked")
    if kind == "packed":
        stack = _packed_stack(stack)
    blocked = kind != "per-row"
    rows = len(slots)
    x = torch.randn(rows, 1, 896).bfloat16()
    together = stack.delta(x, _Rows(slots, None))
    for i, slot in enumerate(slots):
        assert torch.equal(together[i:i + 1], stack.delta(x[i:i + 1], _Rows([slot], None)))
    chunk = torch.randn(7, 896).bfloat16()
    tokens = torch.cat([x[:, 0], chunk])[None]
    for chunks in ([(2, 5)], [(1, 7)], [(slots[0], 1)], [(1, 2), (0, 1), (2, 3)], []):  # other slots, the rows' own
        length = sum(n for _, n in chunks)
        packed = stack.delta(tokens[:, :rows + length], _Rows(slots, None, chunks=chunks))
        assert torch.equal(packed[0, :rows], together[:, 0]), chunks
        if blocked:  # blocked, a prompt's tokens too are each what they are alone
            start = rows
            for slot, n in chunks:
                alone = torch.cat([stack.delta(chunk[i:i + 1][None], _Rows([slot], None))[0] for i in range(
                    start - rows, start - rows + n)])
                assert torch.equal(packed[0, start:start + n], alone), chunks
                start += n


def test_long_runs_on_one_adapter_keep_each_tokens_term_as_alone():
    """Decoding rows and a prompt chunk on their adapter are one run of tokens, longer than one GEMM (BLOCK_MAX):
    each token's term is still the one it has alone."""
    from runtime.engines import lora
    from runtime.engines.lora import _Rows

    stack = _random_stack(896, seed=1)
    slots, chunks = [1, 2, 1, 0, 1], [(1, lora.BLOCK_MAX + 37), (2, 3)]
    tokens = torch.randn(1, len(slots) + sum(n for _, n in chunks), 896)
    packed = stack.delta(tokens, _Rows(slots, None, chunks=chunks))[0]
    every = slots + [slot for slot, n in chunks for _ in range(n)]
    for i in [*range(len(slots)), len(slots), len(slots) + lora.BLOCK_MAX, tokens.shape[1] - 4, tokens.shape[1] - 1]:
        assert torch.equal(packed[i], stack.delta(tokens[:, i:i + 1], _Rows([every[i]], None))[0, 0]), i


def test_a_packed_term_is_the_float32_term_rounded_to_bf16_within_its_precision():
    """The packed bf16 LoRA term is the adapter's math in bf16 (as trained under bf16 autocast), not another one:
    it tracks the float32 term within bf16's precision on every kind of step."""
    from runtime.engines.lora import _Rows

    stack = _random_stack(4864, seed=2, blocked=False)
    packed = _packed_stack(stack)
    x = torch.randn(1, 40, 896).bfloat16()
    rows = _Rows([1, 2, 0, 1], None, chunks=[(2, 30), (1, 6)])
    exact = torch.cat([x[0, i:i + 1].float() @ stack.a[s] @ stack.b[s] * (s != 0) for i, s in enumerate(
        [1, 2, 0, 1] + [2] * 30 + [1] * 6)])  # slot 0: the base model (random here, zeros in a served stack)
    got = packed.delta(x, rows)[0]
    assert got.dtype == torch.bfloat16 and torch.equal(got[2], torch.zeros(4864, dtype=torch.bfloat16))
    torch.testing.assert_close(got.float(), exact, atol=2e-3, rtol=2e-2)


def _each_alone(stack, x, every):
    return torch.cat([stack.product(slot, x[i:i + 1]) for i, slot in enumerate(every)])


def test_a_few_tokens_on_several_adapters_run_as_one_pair_with_each_adapters_own_bits(monkeypatch):
    """Decoding rows on several experts take one pair of GEMMs (every slot side by side, a mask) where the probe
    finds its bits equal to each adapter's own pair; a prompt chunk's many tokens, or one adapter, take the pairs."""
    from runtime.engines.lora import _Rows

    stack = _packed_stack(_random_stack(896, seed=3, blocked=False))
    if not packed_lora.fused_alike(896, 896, 16, stack.layout()):
        pytest.skip("on this CPU the one pair rounds otherwise than each adapter's own: the pairs serve")
    fused = []
    real = stack.fused
    monkeypatch.setattr(stack, "fused", lambda x, masked: fused.append(x.shape[0]) or real(x, masked))
    x = torch.randn(1, 6 + packed_lora.FUSE_MAX, 896).bfloat16()
    cases = [([1, 2, 0, 2], None, True), ([1, 1, 0], None, False), ([2, 1], [(1, 4)], True),
             ([2, 1], [(1, packed_lora.FUSE_MAX - 2)], True), ([2, 1], [(1, packed_lora.FUSE_MAX - 1)], False)]
    for slots, chunks, one_pair in cases:
        tokens = len(slots) + sum(n for _, n in chunks or [])
        rows = _Rows(slots, None, chunks=chunks) if chunks else _Rows(slots, None)
        part = x[:, :tokens] if chunks else x[0, :len(slots), None]
        fused.clear()
        got = stack.delta(part, rows).reshape(tokens, -1)
        every = slots + [slot for slot, n in chunks or [] for _ in range(n)]
        assert torch.equal(got, _each_alone(stack, x[0], every))
        assert bool(fused) is one_pair, (slots, chunks)

    # a slot given another adapter (a load into a freed slot): the one pair is rebuilt, not the old one's weights
    stack.put(2, torch.randn(16, 896) * 0.05, torch.randn(896, 16) * 0.05)
    fused.clear()
    got = stack.delta(x[0, :4, None], _Rows([1, 2, 0, 2], None)).reshape(4, -1)
    assert fused and torch.equal(got, _each_alone(stack, x[0], [1, 2, 0, 2]))

    monkeypatch.setattr(packed_lora, "FUSE_MAX", 4)  # the probe sees a pair that rounds otherwise: it says so
    original = packed_lora.PackedStack.fused
    monkeypatch.setattr(packed_lora.PackedStack, "fused", lambda self, x, masked: original(self, x, masked) * 1.05)
    assert packed_lora.fused_alike_at.__wrapped__(896, 896, 16, stack.layout(), torch.get_num_threads()) is False


def test_where_packed_runs_round_by_their_row_count_each_token_takes_a_pair_of_its_own(monkeypatch):
    """The probe runs at the step's thread count; where it fails for a rank, that adapter's tokens are multiplied
    one at a time (a token's bits as alone by construction), and its runs are never one GEMM."""
    from runtime.engines.lora import _Rows

    stack = _packed_stack(_random_stack(4864, seed=4, blocked=False))
    rows_seen: list[int] = []
    real = packed_lora.linear
    monkeypatch.setattr(packed_lora, "linear", lambda x, packed: rows_seen.append(x.shape[0]) or real(x, packed))
    x = torch.randn(1, 40, 896).bfloat16()
    stack.delta(x, _Rows([1, 1, 1], None, chunks=[(1, 37)]))  # one adapter: its pair (not the one for several)
    assert max(rows_seen) > 1  # probed alike here: runs of tokens are one GEMM
    if not packed_lora.packed_alike(896, 16, 4864):
        pytest.skip("this CPU's packed products round by their row count already")
    monkeypatch.setattr(packed_lora, "packed_alike", lambda fan_in, rank, fan_out: False)
    rows_seen.clear()
    got = stack.delta(x, _Rows([1, 1, 1], None, chunks=[(1, 37)]))[0]
    assert set(rows_seen) == {1}
    assert torch.equal(got, _each_alone(stack, x[0], [1] * 40))


def test_a_prepacked_bf16_model_serves_its_adapters_from_packed_stacks(tiny_model_dir, paths):
    """The engine's bf16 model on a CPU has prepacked linears: its LoRA layers hold packed bf16 pairs whatever the
    adapters' ranks, float32 models float32 stacks; both answer as PEFT's forward within their precision."""
    from transformers import AutoModelForCausalLM

    from runtime.engines import lora as lora_module
    from runtime.engines.prepacked import prepack, prepackable

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    if not prepackable(model):
        pytest.skip("no oneDNN bf16 packing on this CPU: float32 stacks serve")
    model, lora = prepack(model), GroupedLora()
    for name in ["r2", "r8"]:
        model = install_adapter(model, name, *read_adapter(paths[name], model.config))
        lora.sync(model)
    stacks = [m.__dict__["_grouped"] for m in model.modules() if "_grouped" in m.__dict__]
    assert stacks and all(type(s) is packed_lora.PackedStack and s.rank == 8 for s in stacks)
    names = ["r8", BASE, "r2"]
    with torch.inference_mode():
        inputs = _inputs(len(names), 5)
        grouped = lora.forward(model, names, **inputs).logits
        alone = torch.cat([lora.forward(model, [n], **{k: v[i:i + 1] for k, v in inputs.items()}).logits
                           for i, n in enumerate(names)])
    assert torch.equal(grouped, alone)  # each row as alone, in bf16
    fp32, fp32_lora = _served(tiny_model_dir, paths, ["r2", "r8"])
    assert all(type(m.__dict__["_grouped"]) is lora_module._Stack for m in fp32.modules() if "_grouped" in m.__dict__)
    with torch.inference_mode():
        reference = fp32_lora.forward(fp32, names, **inputs).logits
    torch.testing.assert_close(grouped.float(), reference, atol=0.1, rtol=0.05)


def test_the_probe_notices_gemms_that_round_by_their_row_count(monkeypatch):
    """Blocks of one row: MKL's one-row GEMM rounds otherwise than its many-row one, which the probe must see."""
    from runtime.engines import lora

    x, w = torch.randn(8, 896), torch.randn(896, 16)
    if torch.equal((x @ w)[:1], x[:1] @ w):
        pytest.skip("this CPU's one-row GEMM rounds as its 8-row one: nothing for the probe to find")
    monkeypatch.setattr(lora, "BLOCK", 1)
    assert lora._blocked_at.__wrapped__(896, 16, torch.get_num_threads()) is False
    monkeypatch.setattr(lora, "BLOCK", 4)
    assert lora._blocked_at.__wrapped__(896, 16, torch.get_num_threads()) is lora._blocked(896, 16)


def test_a_layer_that_sees_other_positions_than_the_steps_tokens_is_refused():
    from runtime.engines.lora import _Rows, _Stack

    stack, rows = _Stack(2, 4, 8, 8), _Rows([1, 0], None, chunks=[(1, 3)])
    stack.a.normal_()
    stack.delta(torch.randn(1, 5, 8), rows)
    with pytest.raises(ValueError, match="saw 2 tokens, the step has 5"):
        stack.delta(torch.randn(1, 2, 8), rows)


def test_a_lora_on_the_output_head_takes_peft_s_forward(tiny_model_dir: Path):
    """The head runs on the kept logits' positions only, not on the step's tokens: the model is not grouped."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    lora = GroupedLora()
    lora.sync(model)
    assert not lora.grouped
