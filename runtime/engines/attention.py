"""Decode attention for the `hf` engine: one query token per row over a GQA KV cache, without SDPA's CPU kernel.

Measured on SmolLM2-135M, bf16, 1 thread, 8 rows decoding over a 400-token left-padded cache (the served path's
shape with real prompts): one forward took 220-270 ms with transformers' ``sdpa`` attention and 40 ms with this.
Two costs go: ``aten::_scaled_dot_product_flash_attention_for_cpu`` spent 4 ms per layer on a single query token
(it tiles for long queries), and because the padded batch passes a mask, ``sdpa_attention_forward`` cannot use
``enable_gqa`` and copies K and V to every query head first (``repeat_kv``: 3x the cache, every layer, every step).
Here the query heads of a KV head are one small matrix: scores = q_group @ K^T and out = probs @ V, batched over
rows and KV heads, reading the cache once, in place.

Numerics are transformers' ``eager`` attention's (matmuls in the model's dtype, mask and softmax in float32):
identical to ``sdpa`` in float32. Prompts (more than one query token) go to ``sdpa`` unchanged, and the masks are
``sdpa``'s (``sdpa_mask``), so padding and sliding windows mean what they meant.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
__all__ = ["NAME", "use_decode_attention"]

NAME = "mixmerge_decode"


def decode_attention(module, query, key, value, attention_mask, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs):
    """transformers' attention-function signature: query ``[b, heads, q, d]``, key/value ``[b, kv_heads, kv, d]``;
    returns ``([b, q, heads, d], None)``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, heads, length, dim = query.shape
    if length != 1 or kwargs.get("softcap") or kwargs.get("s_aux") is not None or module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    kv_heads = key.shape[1]
    grouped = query.reshape(rows, kv_heads, heads // kv_heads, dim)  # a KV head's query heads, one matrix
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:  # [b, 1, 1, kv]: bool (True = attend) from sdpa_mask, or additive
        mask = attention_mask[:, :, -1:, -key.shape[2]:]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = scores.softmax(dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [b, kv_heads, group, d]
    return out.reshape(rows, 1, heads, dim), None


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
