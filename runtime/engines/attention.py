"""Decode attention for the `hf` engine: one query token per row over a GQA KV cache, without SDPA's CPU kernel.

Measured on SmolLM2-135M, bf16, 1 thread, 8 rows decoding over a 400-token left-padded cache (the served path's
shape with real prompts): one forward took 220-270 ms with transformers' ``sdpa`` attention and 40 ms with this.
Two costs go: ``aten::_scaled_dot_product_flash_attention_for_cpu`` spent 4 ms per layer on a single query token
(it tiles for long queries), and because the padded batch passes a mask, ``sdpa_attention_forward`` cannot use
``enable_gqa`` and copies K and V to every query head first (``repeat_kv``: 3x the cache, every layer, every step).
Here the query heads of a KV head are one small matrix: scores = q_group @ K^T and out = probs @ V, batched over
rows and KV heads, reading the cache once, in place.

Numerics are transformers' ``eager`` attention's (matmuls in the model's dtype, mask and softmax in float32):
identical to ``sdpa`` in float32; except a packed step's decoding rows on the CPU (``_chunked_rows``), whose
``probs @ V`` is float32 too, summed in fixed chunks so that a row computes as it would alone. Prompts (more
than one query token) go to ``sdpa`` unchanged, and the masks are ``sdpa``'s (``sdpa_mask``), so padding and
sliding windows mean what they meant.

A packed step (``Packed``, passed to the model as the ``mixmerge_step`` keyword): the batch's one pending token per
row and newcomers' prompt chunks as ONE sequence ``[1, rows + chunk tokens]``, so the decode rows ride in the
prompt chunk's matmuls (each weight is read once a step, not once for the prompt and once for the rows: vLLM's
chunked prefill mixes the two the same way). The model runs without a cache of its own (``use_cache=False``);
here each part's keys and values are appended to its own cache (the batch's left-padded one, each newcomer's) and
attended: the rows as above, a chunk causally over its prompt so far.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
__all__ = ["NAME", "Packed", "packable", "use_decode_attention"]

NAME = "mixmerge_decode"
NUMERICS = 9  # bump when the decode math changes (2: scheduler pads single-token steps; 3: on the CPU each row
# attends its own columns only; 4: on the CPU each decoding row's LoRA term is its own product, lora.py; 5: the
# forward thread runs on every core, threads.py: bf16 GEMMs split over 2 threads round 1 of 80 Qwen answers
# otherwise; 6: on the CPU the rows' attention is batched, float32 chunked sums, _chunked_rows; 7: so are a packed
# step's LoRA terms where every row and chunk shares one adapter, which ran as one GEMM over the whole step and
# rounded by how many rows decoded; 8: on the CPU each adapter's tokens are one GEMM padded to a multiple of 4
# rows, lora.py; everywhere the LoRA term is added to the base output in float32 and rounded once, as PEFT does;
# on the CPU the rows' keys are stored transposed; 9: on a prepacked bf16 model the LoRA term is oneDNN's packed bf16
# product, added in bf16 (not 8's float32 add), lora.py): the bench's cached greedy answers of the hf engine key on it


def decode_attention(module, query, key, value, attention_mask, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs):
    """transformers' attention-function signature: query ``[b, heads, q, d]``, key/value ``[b, kv_heads, kv, d]``;
    returns ``([b, q, heads, d], None)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    step = kwargs.get("mixmerge_step")
    if step is not None:
        return _packed(module.layer_idx, query, key, value, scaling, step)
    rows, heads, length, dim = query.shape
    if length != 1 or kwargs.get("softcap") or kwargs.get("s_aux") is not None or module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    mask = None if attention_mask is None else attention_mask[:, :, -1:, -key.shape[2]:]
    return _one_token(query, key, value, mask, scaling), None


def _one_token(query, key, value, mask, scaling: float | None):
    """query ``[b, heads, 1, d]`` over key/value ``[b, kv_heads, kv, d]``; mask ``[b, 1, 1, kv]``, bool (True =
    attend, from sdpa_mask) or additive, or None. Returns ``[b, 1, heads, d]``."""
    import torch

    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(rows, kv_heads, heads // kv_heads, dim)  # a KV head's query heads, one matrix
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (dim ** -0.5 if scaling is None else scaling)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = scores.softmax(dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [b, kv_heads, group, d]
    return out.reshape(rows, 1, heads, dim)


CHUNK = 64  # columns per partial sum of a decoding row's attention on the CPU (``_chunked_rows``)


def _window(spans: list[tuple[int, int]], device) -> tuple[int, int, object]:
    """A packed step's attention window, the same in every layer (built once a step): whole chunks ``n``, its
    ``width``, and ``masked [rows, 1, 1, width]``, True on each row's columns left of its own tokens."""
    import torch

    lengths = torch.tensor([stop - begin for begin, stop in spans], device=device)
    n = -(-int(lengths.max()) // CHUNK)
    width = n * CHUNK
    real = torch.arange(width, device=device)[None, :] >= (width - lengths)[:, None]  # [rows, width]
    return n, width, ~real[:, None, None, :]


def _chunked_rows(query, key, value, spans: list[tuple[int, int]], scaling: float | None, window=None):
    """``_one_token`` for the rows of a left-padded cache, batched, with every sum over a row's columns taken so that
    nothing about the other rows reaches its arithmetic (``spans``: row i's real columns ``[start, end)``, one
    ``end`` for all). A row's result depends only on its own tokens: the batch's answers are each row's alone.

    Why not one batched ``_one_token`` under a mask: ``probs @ V`` reduces over the cache's width, and a bf16 or
    float32 GEMM's blocking over that width, and where the row's tokens fall in it (left padding from longer rows,
    spare columns), changed a row's output (SmolLM2, layer 11; 2-3% of rows on Qwen's shapes at random widths),
    so a row's greedy answer depended on who else was decoding. The products each row alone (one small matmul
    pair per row, what this replaced) took ~20 ms of a ~80 ms Qwen2.5-0.5B step at 8 rows, this ~10
    (benchmarks/decode_step.py --profile; 28 vs 11.5 ms for the attention alone over 24 layers x 250 columns).

    How: the window of ``n * CHUNK`` columns ending at ``end`` (the batch keeps ``CHUNK - 1`` masked columns left of
    its longest row: ``Batch.ROOM``), so chunk k is the same ``CHUNK`` columns counted back from the row's newest
    token however wide the batch. Scores are one dot product over the head dim each (no reduction over the width);
    the softmax's sum and ``probs @ V`` are a partial per chunk (fixed shapes: the same kernel and the same order
    whatever the batch), added chunk after chunk in float32 (``cumsum``: a sequential sum, so a shorter row's
    leading chunks of exact zeros leave its sum as it is alone). Numerics: float32 from the scores on (eager
    attention rounds the probabilities to the model's dtype before ``probs @ V``); bit-identical for a row alone
    and in any batch (tests/unit/serving/test_packed_steps.py)."""
    import torch
    from torch.nn.functional import pad

    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    end = spans[0][1]
    n, width, masked = window or _window(spans, key.device)
    keys, values = key[:, :, max(end - width, 0):end], value[:, :, max(end - width, 0):end]
    if end < width:  # a cache without the room (a caller's own): its missing columns as masked zeros
        keys, values = pad(keys, (0, 0, width - end, 0)), pad(values, (0, 0, width - end, 0))
    grouped = query.reshape(rows, kv_heads, heads // kv_heads, dim)
    # in place from the product on (a fresh tensor): the same arithmetic, four allocations a layer fewer
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).float().mul_(dim ** -0.5 if scaling is None else scaling)
    scores.masked_fill_(masked, float("-inf"))
    weights = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_().view(rows, kv_heads, -1, n, CHUNK)
    total = weights.sum(dim=-1).cumsum(dim=-1)[..., -1:, None]  # [rows, kv_heads, group, 1, 1]
    probs = weights.div_(total).transpose(2, 3)  # [rows, kv_heads, n, group, CHUNK]
    parts = torch.matmul(probs, values.float().reshape(rows, kv_heads, n, CHUNK, dim))  # [rows, kv_heads, n, group, d]
    out = parts.cumsum(dim=2)[:, :, -1]
    return out.to(value.dtype).reshape(rows, 1, heads, dim)


@dataclass
class Packed:
    """One packed step: ``rows`` pending tokens first (row i's keys appended to ``cache``, attended over its own
    ``spans[i]`` on the CPU, elsewhere under ``mask [rows, 1, 1, kv]``, True = attend, the new token included),
    then one chunk per newcomer: ``(its cache, its tokens in this step)``. Caches are
    ``transformers.DynamicCache``s, updated layer by layer."""

    rows: int = 0
    cache: object | None = None
    mask: object | None = None
    chunks: list[tuple[object, int]] = field(default_factory=list)
    layers_seen: set[int] = field(default_factory=set)  # checked after the forward: every layer attended packed
    spans: list[tuple[int, int]] | None = None  # each row's real columns [start, end) (CPU: ``_chunked_rows``)
    window: tuple | None = None  # ``_window(spans)``, built at the first layer

    def wide_mask(self, width: int):
        """``mask`` with False columns to ``width`` (the rows' buffers' spare room, attended as masked)."""
        import torch

        if width > self.mask.shape[-1]:
            spare = self.mask.new_zeros(*self.mask.shape[:-1], width - self.mask.shape[-1])
            self.mask = torch.cat([self.mask, spare], dim=-1)
        return self.mask


def _packed(layer: int, query, key, value, scaling: float | None, step: Packed):
    """query ``[1, heads, tokens, d]``, key/value ``[1, kv_heads, tokens, d]`` of a packed step: each part
    appended to its cache and attended there. Returns ``[1, tokens, heads, d]``."""
    import torch

    step.layers_seen.add(layer)
    outs, start = [], step.rows
    if step.rows:
        def rows_of(x):
            return x[0, :, :step.rows].transpose(0, 1).unsqueeze(2)  # [rows, heads, 1, d]

        cached = step.cache.layers[layer]
        keys = _append(cached, "keys", rows_of(key), transposed=step.spans is not None)
        values = _append(cached, "values", rows_of(value))
        if step.spans is not None:
            step.window = step.window or _window(step.spans, keys.device)
            outs.append(_chunked_rows(rows_of(query), keys, values, step.spans, scaling, step.window).transpose(0, 1))
        else:
            mask = step.wide_mask(keys.shape[2])
            outs.append(_one_token(rows_of(query), keys, values, mask, scaling).transpose(0, 1))
    for cache, length in step.chunks:
        part = slice(start, start + length)
        keys, values = cache.update(key[:, :, part], value[:, :, part], layer)
        outs.append(_causal(query[:, :, part], keys, values, scaling).transpose(1, 2))
        start += length
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), None  # a lone part: no copy


def _append(layer, name: str, new, spare: int = 32, transposed: bool = False):
    """``layer.<name>`` (a DynamicLayer's keys or values, ``[rows, kv_heads, kv, d]``) with ``new`` appended, in
    place where its buffer has room: the rows' cache grows a column a step, and ``torch.cat`` copied all of it
    every step (15 ms of a 44 ms step at 8 rows x 300 columns on SmolLM2-135M). The buffer keeps ``spare`` zeroed
    columns beyond the end; a cache the batch reshaped (a row joined or left) gets a fresh one. Returns the whole
    buffer (``transposed``: as a transposed view of it), attended whole (spare columns masked).

    ``transposed``: the buffer is stored ``[rows, kv_heads, d, kv]`` and ``layer.<name>`` is a transposed view of
    it, so that ``keys.transpose(-1, -2)`` is row-major for the scores' matmul: a bf16 bmm on the CPU copied the
    strided K^T first, every layer (Qwen2.5-0.5B, 16 rows x 448 columns: 383 us a layer against 99)."""
    def logical(buffer):
        return buffer.transpose(2, 3) if transposed else buffer

    old = getattr(layer, name)
    buffer = layer.__dict__.get(f"_{name}_buffer")
    width, more = old.shape[2], new.shape[2]
    if (buffer is None or logical(buffer).data_ptr() != old.data_ptr() or logical(buffer).stride() != old.stride()
            or buffer.shape[:2] != old.shape[:2] or logical(buffer).shape[2] < width + more):
        columns = width + more + spare  # zeros: 0 x garbage is NaN
        buffer = old.new_zeros(*old.shape[:2], *((old.shape[3], columns) if transposed else (columns, old.shape[3])))
        logical(buffer)[:, :, :width] = old
        layer.__dict__[f"_{name}_buffer"] = buffer
    logical(buffer)[:, :, width:width + more] = new
    setattr(layer, name, logical(buffer)[:, :, :width + more])
    return logical(buffer)


def _causal(query, key, value, scaling: float | None):
    """A prompt chunk ``[1, heads, q, d]`` over its prompt so far ``[1, kv_heads, past + q, d]``."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    q, kv = query.shape[2], key.shape[2]
    if q == kv:  # the first chunk: plain causal, no mask (SDPA's flash kernel, grouped heads)
        return scaled_dot_product_attention(query, key, value, is_causal=q > 1, scale=scaling, enable_gqa=True)
    group = query.shape[1] // key.shape[1]
    # token i sees the past and itself
    allowed = torch.ones(q, kv, dtype=torch.bool, device=query.device).tril(diagonal=kv - q)
    return scaled_dot_product_attention(query, key.repeat_interleave(group, 1), value.repeat_interleave(group, 1),
                                        attn_mask=allowed, scale=scaling)


PACKED_ARCHITECTURES = {"llama", "qwen2"}  # attention modules checked to pass the packed step (a keyword) on


def packable(model) -> bool:
    """Whether packed steps can run on ``model``: an architecture whose attention passes keywords on to the
    attention function (others run rows and prompts apart), this attention installed, full attention in every
    layer."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    return config.model_type in PACKED_ARCHITECTURES and getattr(config, "_attn_implementation", None) == NAME and all(
        kind == "full_attention" for kind in getattr(config, "layer_types", None) or ["full_attention"])


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_decode_attention(model):
    """Switch a loaded model (or a PEFT model around one) from ``sdpa`` to this; other implementations (eager,
    flash) are left alone. Returns the model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return model
    _register()
    base.set_attn_implementation(NAME)
    return model
