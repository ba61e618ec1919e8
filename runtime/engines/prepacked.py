"""oneDNN-prepacked bf16 linears for serving on a CPU.

In bfloat16 on a CPU, ``torch.nn.functional.linear`` runs oneDNN's matmul, which first reorders the weight into
its blocked layout: on every call, so a decode step reads every weight twice and writes it once. Reordered once at
load (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's freezing does for CPU graphs) and multiplied
with ``torch.ops.mkldnn._linear_pointwise``, the same kernel runs on the same blocked weights: the outputs are
bit-identical to the stock path (checked on this machine before packing; answers and caches keyed by them do not
move) and the hf engine's Qwen2.5-Coder-0.5B decode step at batch 1 took 48 ms instead of 90
(``benchmarks/bandwidth.py``; the bare model at batch 8 over a 400-token cache: 155 instead of 207 ms). vLLM's
CPU backend does the same (``dispatch_cpu_unquantized_gemm``).

Each packed ``nn.Linear`` keeps its module, name and attributes (PEFT wraps it and reads ``in_features``, the
weight's dtype and device); its forward is the packed matmul and its dense weight is dropped (an empty tensor of
the same dtype), so the weights are held once. A weight shared with another module (an LM head tied to the input
embeddings) stays dense for the other user, and the head holds a packed copy beside it: the table is then held
twice (SmolLM2-135M: +54 MB; Qwen2.5-Coder-0.5B's head is untied). Only bf16 on a CPU: in float32 oneDNN's packed
matmul does not give MKL's numbers, and on a GPU cuBLAS needs no reorder. "Bit-identical" is checked, not
assumed: before packing, one linear of each shape is run both ways at 1, 8 and 200 rows (``prepackable``), and a
model where any differs is served as loaded.

Adapters that copy base layers (``modules_to_save``: ``dense_weights_needed``) cannot ride on packed linears:
known at start, the engine keeps the dense weights (no packing); hot-loaded onto a packed model, they are refused
with the fix (``engine.prepack: false``). DoRA reads them too: an ``HFRunner`` given one runs on dense
weights, and the engine (so ``runtime serve`` and ``runtime eval``) refuses DoRA (PEFT cannot mix it into per-row
batches: fold it into a full model first). The packed weight is not a
parameter or buffer: a model is packed where it will run (after ``.to(device)``), and ``prepacked_bytes`` counts
it.
"""

from __future__ import annotations

import logging
import types

log = logging.getLogger(__name__)
__all__ = ["dense_weights_needed", "prepack", "prepack_linears", "prepackable", "prepacked_bytes"]


def prepack(model):
    """``model`` with its linears prepacked where :func:`prepackable` says so (in place); returns it."""
    if prepackable(model):
        log.info("prepacked linears: %d reordered once for oneDNN", prepack_linears(model))
    return model


def dense_weights_needed(adapter_config) -> str | None:
    """Why an adapter (its adapter_config.json as a dict, or a PEFT config) cannot ride on prepacked linears, or
    None: DoRA reads the base layer's weight at every forward (an ``HFRunner`` runs one; the engine refuses it:
    ``hf.read_adapter``), and ``modules_to_save`` copies whole base layers (the copy would keep serving
    the packed original)."""
    def get(key: str):
        return adapter_config.get(key) if isinstance(adapter_config, dict) else getattr(adapter_config, key, None)

    if get("use_dora"):
        return "it is a DoRA adapter (use_dora), whose forward reads the base layers' dense weights"
    if get("modules_to_save"):
        return f"it trains whole layers (modules_to_save: {get('modules_to_save')}), copied from the dense weights"
    return None


def prepackable(model) -> bool:
    """Whether ``model``'s linears can be packed here: bf16 weights on a CPU whose oneDNN reproduces the stock
    linear exactly, probed on one linear of each shape at 1, 8 and 200 rows (a decode step, a batch of them, a
    prompt chunk), as the engine calls them (``[1, rows, in]``)."""
    import torch

    linears = [m for m in model.modules() if type(m) is torch.nn.Linear and "_packed" not in m.__dict__]
    if (not linears or any(m.weight.dtype != torch.bfloat16 or m.weight.device.type != "cpu" for m in linears)
            or not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    shapes = {(m.in_features, m.out_features, m.bias is not None): m for m in linears}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in shapes.values():
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach())
            except RuntimeError as e:  # a oneDNN build without bf16 support
                log.info("prepacked linears: not here (%s)", e)
                return False
            for rows in (1, 8, 200):
                x = torch.randn(1, rows, m.in_features, generator=generator).to(torch.bfloat16)
                if not torch.equal(_matmul(x, packed, m.bias), torch.nn.functional.linear(x, m.weight, m.bias)):
                    log.info("prepacked linears: not here (oneDNN's packed matmul does not reproduce the stock "
                             "linear at %d x %d, %d rows)", m.in_features, m.out_features, rows)
                    return False
    return True


def prepack_linears(model) -> int:
    """Pack every bf16 ``nn.Linear`` of ``model`` in place (see the module doc); the number packed."""
    import torch

    counts: dict[int, int] = {}  # users of a parameter's memory: a shared weight stays dense for the others
    for m in model.modules():
        for p in m.parameters(recurse=False):
            counts[p.data_ptr()] = counts.get(p.data_ptr(), 0) + 1
    packed = 0
    with torch.no_grad():  # (not inference_mode: its tensors could not be used outside it)
        for module in model.modules():
            if (type(module) is not torch.nn.Linear or "_packed" in module.__dict__
                    or module.weight.dtype != torch.bfloat16 or module.weight.device.type != "cpu"):
                continue  # (PEFT's own LoRA A/B are float32: packing runs before any adapter joins anyway)
            weight = module.weight
            module.__dict__["_packed"] = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            module.forward = types.MethodType(_packed_forward, module)
            if counts[weight.data_ptr()] == 1:
                _release(weight)
                module.weight = torch.nn.Parameter(torch.empty(0, dtype=weight.dtype, device=weight.device),
                                                   requires_grad=False)
            packed += 1
    return packed


def prepacked_bytes(model) -> int:
    """Bytes held by the packed weights (not parameters, so ``named_parameters`` does not count them)."""
    return sum(m.__dict__["_packed"].numel() * m.__dict__["_packed"].element_size()
               for m in model.modules() if "_packed" in m.__dict__)


def _release(tensor) -> None:
    """Give the memory pages wholly inside ``tensor``, which is about to be dropped, back to the OS now
    (``madvise(MADV_DONTNEED)``, Linux). transformers memory-maps the checkpoint: reading a weight to pack it maps
    its pages in, and they stay resident (file pages, counted in the RSS) for as long as any tensor of the file,
    such as the embedding table, keeps the mapping open: a packed Qwen2.5-Coder-0.5B server held 4.1 GB instead of
    2.0. Only pages inside the tensor's own bytes are touched, and no other tensor uses them (its memory has one
    user: ``prepack_linears``); from a file mapping they would read the file again, from the heap zeros."""
    import ctypes
    import mmap
    import sys

    if sys.platform != "linux" or tensor.device.type != "cpu":
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    low, high = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if high > low:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.madvise(low, high - low, 4) != 0:  # MADV_DONTNEED
            log.debug("prepacked linears: madvise failed (errno %d); the pages stay resident", ctypes.get_errno())


def _matmul(x, packed, bias):
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packed_forward(module, x):
    return _matmul(x, module.__dict__["_packed"], module.bias)
