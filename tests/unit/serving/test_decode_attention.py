"""The hf engine's decode attention (``attention.py``) against transformers' sdpa on a padded GQA batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.engines.attention import NAME, use_decode_attention


def _load(path: Path, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()


def _padded_decode(model, steps: int = 3):
    """Three left-padded rows of different lengths (prompt pass, then ``steps`` one-token steps fed their argmax):
    each step's logits."""
    import torch
    from transformers import DynamicCache

    torch.manual_seed(0)
    lengths, width = [5, 11, 8], 11
    ids = torch.randint(3, 500, (3, width))
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    cache, out = DynamicCache(), []
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, -1]
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
            positions = mask[:, :-1].sum(dim=1, keepdim=True)
            logits = model(input_ids=logits.argmax(-1, keepdim=True), attention_mask=mask, position_ids=positions,
                           past_key_values=cache, use_cache=True).logits[:, -1]
            out.append(logits)
    return out


def test_decode_steps_equal_sdpa_in_float32(tiny_model_dir):
    import torch

    reference = _padded_decode(_load(tiny_model_dir))
    model = use_decode_attention(_load(tiny_model_dir))
    assert model.config._attn_implementation == NAME
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the grouped (GQA) path runs
    for ours, theirs in zip(_padded_decode(model), reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_bf16_decode_picks_the_same_tokens_as_sdpa(tiny_model_dir):
    reference = _padded_decode(_load(tiny_model_dir, "bfloat16"))
    ours = _padded_decode(use_decode_attention(_load(tiny_model_dir, "bfloat16")))
    assert [o.argmax(-1).tolist() for o in ours] == [r.argmax(-1).tolist() for r in reference]


def test_a_peft_model_is_switched_and_other_implementations_are_left_alone(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    wrapped = use_decode_attention(get_peft_model(_load(tiny_model_dir), LoraConfig(target_modules=["q_proj"])))
    assert wrapped.get_base_model().config._attn_implementation == NAME
    eager = _load(tiny_model_dir)
    eager.set_attn_implementation("eager")
    assert use_decode_attention(eager).config._attn_implementation == "eager"


def test_training_mode_falls_back_to_sdpa(tiny_model_dir):
    import torch

    model = use_decode_attention(_load(tiny_model_dir)).train()
    ids = torch.randint(3, 500, (2, 6))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # the prompt path (sdpa) carries gradients
    assert torch.isfinite(loss)


def test_the_rows_cache_grows_in_place_and_a_reshaped_one_gets_a_fresh_buffer():
    import torch

    from runtime.engines.attention import _append

    class Layer:
        keys = torch.arange(12.0).reshape(1, 1, 3, 4)

    layer = Layer()
    first = _append(layer, "keys", torch.full((1, 1, 1, 4), -1.0), spare=2)
    assert first.shape[2] == 6 and layer.keys.shape[2] == 4  # the buffer has 2 spare columns, zeroed
    assert torch.equal(first[:, :, 4:], torch.zeros(1, 1, 2, 4))
    second = _append(layer, "keys", torch.full((1, 1, 1, 4), -2.0), spare=2)
    assert second.data_ptr() == first.data_ptr()  # written in place
    assert layer.keys[0, 0, :, 0].tolist() == [0.0, 4.0, 8.0, -1.0, -2.0]
    layer.keys = layer.keys[:, :, 1:].clone()  # the batch cut a column: not the buffer any more
    third = _append(layer, "keys", torch.full((1, 1, 1, 4), -3.0), spare=2)
    assert third.data_ptr() != first.data_ptr()
    assert layer.keys[0, 0, :, 0].tolist() == [4.0, 8.0, -1.0, -2.0, -3.0]


@pytest.mark.parametrize("transposed", [False, True])
def test_the_rows_cache_buffer_keeps_its_layout_in_place_and_starts_fresh_after_a_reshape(transposed):
    """Stored transposed (the CPU's keys: K^T row-major for the scores' matmul), the cache reads as before."""
    import torch

    from runtime.engines.attention import _append

    class Layer:
        keys = torch.arange(24.0).reshape(2, 1, 3, 4)

    layer, new = Layer(), torch.arange(100.0, 108.0).reshape(2, 1, 1, 4)
    first = _append(layer, "keys", new, spare=2, transposed=transposed)
    assert torch.equal(layer.keys, torch.cat([torch.arange(24.0).reshape(2, 1, 3, 4), new], dim=2))
    assert first.shape == (2, 1, 6, 4) and torch.equal(first[:, :, 4:], torch.zeros(2, 1, 2, 4))
    second = _append(layer, "keys", new + 10, spare=2, transposed=transposed)
    assert second.data_ptr() == first.data_ptr() and torch.equal(layer.keys[:, :, 4], (new + 10)[:, :, 0])
    layer.keys = layer.keys[[1]]  # a row left: a fresh tensor, in the logical layout
    third = _append(layer, "keys", new[[0]] + 20, spare=2, transposed=transposed)
    assert third.data_ptr() != first.data_ptr()
    assert torch.equal(layer.keys[0, 0, :, 0], torch.tensor([12.0, 16.0, 20.0, 104.0, 114.0, 120.0]))
    if transposed:  # stored [rows, kv_heads, d, columns]: K^T is row-major
        assert layer.keys.transpose(-1, -2).stride()[-1] == 1
