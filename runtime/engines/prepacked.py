"""oneDNN-prepacked bf16 linears for serving on a CPU.

In bfloat16 on a CPU, ``torch.nn.functional.linear`` runs oneDNN's matmul, which first reorders the weight into
its blocked layout: on every call, so a decode step reads every weight twice and writes it once. Reordered once at
load (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's freezing does for CPU graphs) and multiplied
with ``torch.ops.mkldnn._linear_pointwise``, the same kernel runs on the same blocked weights: the outputs are
bit-identical to the stock path (checked on this machine before packing; answers and caches keyed by them do not
move) and a Qwen2.5-Coder-0.5B decode step at batch 1 took 52 ms instead of 106 (batch 8: 155 instead of 207;
benchmarks/README.md, prepacked.py). vLLM's CPU backend does the same (``dispatch_cpu_unquantized_gemm``).

Each packed ``nn.Linear`` keeps its module, name and attributes (PEFT wraps it and reads ``in_features``, the
weight's dtype and device); its forward is the packed matmul and its dense weight is dropped (an empty tensor of
the same dtype), so the weights are held once. A weight shared with another module (an LM head tied to the input
embeddings) stays dense for the other user, and the head holds a packed copy beside it. Only bf16 on a CPU: in
float32 oneDNN's packed matmul does not give MKL's numbers, and on a GPU cuBLAS needs no reorder.
"""

from __future__ import annotations

import logging
import types

log = logging.getLogger(__name__)
__all__ = ["prepack", "prepack_linears", "prepackable", "prepacked_bytes"]


def prepack(model):
    """``model`` with its linears prepacked where :func:`prepackable` says so (in place); returns it."""
    if prepackable(model):
        log.info("prepacked linears: %d reordered once for oneDNN", prepack_linears(model))
    return model


def prepackable(model) -> bool:
    """Whether ``model``'s linears can be packed here: bf16 weights on a CPU whose oneDNN reproduces the stock
    linear exactly (probed on the model's first linear)."""
    import torch

    first = next((m for m in model.modules() if type(m) is torch.nn.Linear), None)
    if (first is None or first.weight.dtype != torch.bfloat16 or first.weight.device.type != "cpu"
            or not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    x = torch.randn(3, first.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.inference_mode():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(first.weight.detach())
            same = torch.equal(_matmul(x, packed, first.bias), torch.nn.functional.linear(x, first.weight, first.bias))
        except RuntimeError as e:  # a oneDNN build without bf16 support
            log.info("prepacked linears: not here (%s)", e)
            return False
    if not same:
        log.info("prepacked linears: not here (oneDNN's packed matmul does not reproduce the stock linear)")
    return same


def prepack_linears(model) -> int:
    """Pack every bf16 ``nn.Linear`` of ``model`` in place (see the module doc); the number packed."""
    import torch

    counts: dict[int, int] = {}  # a parameter's users: a shared weight stays dense for the others
    for m in model.modules():
        for p in m.parameters(recurse=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
    packed = 0
    with torch.inference_mode():
        for module in model.modules():
            if (type(module) is not torch.nn.Linear or "_packed" in module.__dict__
                    or module.weight.dtype != torch.bfloat16 or module.weight.device.type != "cpu"):
                continue  # (PEFT's own LoRA A/B are float32: packing runs before any adapter joins anyway)
            weight = module.weight
            module.__dict__["_packed"] = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            module.forward = types.MethodType(_packed_forward, module)
            if counts[id(weight)] == 1:
                module.weight = torch.nn.Parameter(torch.empty(0, dtype=weight.dtype, device=weight.device),
                                                   requires_grad=False)
            packed += 1
    return packed


def prepacked_bytes(model) -> int:
    """Bytes held by the packed weights (not parameters, so ``named_parameters`` does not count them)."""
    return sum(m.__dict__["_packed"].numel() * m.__dict__["_packed"].element_size()
               for m in model.modules() if "_packed" in m.__dict__)


def _matmul(x, packed, bias):
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packed_forward(module, x):
    return _matmul(x, module.__dict__["_packed"], module.bias)
