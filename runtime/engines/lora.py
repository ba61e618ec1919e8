"""Grouped LoRA for mixed-adapter batches (the Punica / S-LoRA "BGMV" idea in plain torch, CPU and GPU).

PEFT mixes adapters by row (``adapter_names=``): in every LoRA layer, per adapter present in the batch, it lists
the rows, indexes them out, casts, runs A, B, the scale and an index-add (``peft/tuners/lora/layer.py``,
``_mixed_batch_forward``), and around each forward it walks every module and registers a pre-hook on each LoRA
layer (``LoraModel._enable_peft_forward_hooks``). With 4 adapters in a batch of 8 that is thousands of small ops a
step on SmolLM2-135M (210 LoRA layers): a step took 2.6x a plain model's on a CPU.

Here PEFT stays the container (injection, ``transplant``, ``delete_adapter``, folding all work as before) and only
the serving forward changes: per LoRA layer, the resident adapters' A and B are stacked once per load into
``A [slots, in, rank]`` and ``B [slots, rank, out]`` (float32 like PEFT's LoRA weights, the scaling folded into
B, ranks padded with zeros to the largest, slot 0 all zeros for rows on the base model; sized for
``engine.max_loras`` once), and a step with no adapter skips the LoRA math. The stacks are a second, float32 copy
of the resident adapters beside PEFT's (max_loras + 1 slots: ~100 MB for SmolLM2-135M r16 all-linear, ~175 MB for
Qwen2.5-Coder-0.5B); on a prepacked bf16 model (below) the stacks hold bf16 copies instead (the pairs, the dense
side-by-side ``a`` and ``b``, and their packed copy once a step uses it).

On the CPU, per step, the tokens (decoding rows and prompt chunks alike) are grouped by slot once (``_Plan``) and
each LoRA layer runs two GEMMs per slot in use over its tokens, padded to a multiple of ``BLOCK`` rows
(``_Stack.product``, at most ``BLOCK_MAX`` rows a GEMM). A float32 GEMM over 8 rows rounds other sums than over 1
here (Qwen2.5's 896 x 4864 layer: 37,031 of 38,912 outputs of 8 rows differ in float32, 28 still after the cast
to bf16), but MKL gives a row the same bits in any GEMM of a multiple of 4 rows, wherever the row sits: probed per
shape and thread count at first use, every such size up to ``BLOCK_MAX`` (``_blocked``), so a token's LoRA term
is the one it has alone, whoever else runs. Where the probe fails, each row gets a matmul of its own (a gather of
its slot's A and B and a ``bmm``: ``_Rows.per_row``), as everywhere before; on a GPU (bf16 answers depend on the
batch there anyway) rows mixing slots take that gather and ``bmm``, and a lone slot one GEMM.

Qwen2.5-Coder-0.5B with its four trained experts at 16 rows over a 458-column cache (bf16, the engine's 2
threads, ``benchmarks/decode_step.py``, profiled): the per-row gather copied ~560 MB a step (``index_select``, 63
of 191 ms); in blocks the step took 156 ms. Earlier, measured against the gather at batch 8 and none faster: one
matmul with every slot's A concatenated and a row mask (its B product over every slot's rank costs 5x the flops: a
[16, 80] x [80, 4864] float32 GEMM takes 170 us against 2 x 16 for two slots' blocks), PEFT's own loop over the
slots (its hooks and casts per layer), and bf16 LoRA math through plain matmuls (slower on this CPU: each call
reorders its weights for oneDNN, and its argmax drifted from PEFT's float32 term). In float32 the concatenated
matmul is still slower; in packed bf16 (below) it is the faster way for decoding rows on several adapters.

Where the base model's linears are prepacked (``prepacked.py``: bf16 on a CPU), the LoRA layers hold each resident
adapter as a pair of oneDNN-packed bf16 linears instead, the term computed and added in bf16
(``packed_lora.py``: 4-5x faster over a prompt chunk than the float32 GEMMs here).

Layers PEFT's plain LoRA does not describe (embeddings, convolutions, variants such as DoRA, a LoRA bias) and a
LoRA on the output head (it sees the kept logits' positions only) keep PEFT's own mixed-batch forward for the whole
model (``GroupedLora.grouped`` is False).
"""

from __future__ import annotations

import functools
import itertools
import logging
import types
from contextlib import contextmanager

from runtime.engines.packed_lora import PackedStack, masked_columns

log = logging.getLogger(__name__)
__all__ = ["BASE", "GroupedLora"]

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


class _Stack:
    """One LoRA layer's resident adapters: ``a [slots, in, rank]``, ``b [slots, rank, out]`` (scaling in b)."""

    def __init__(self, slots: int, rank: int, fan_in: int, fan_out: int, device=None) -> None:
        import torch

        self.a = torch.zeros(slots, fan_in, rank, device=device)
        self.b = torch.zeros(slots, rank, fan_out, device=device)
        self.device = self.a.device

    def fits(self, slots: int, rank: int) -> bool:
        return self.a.shape[0] >= slots and self.a.shape[2] >= rank

    def grown(self, slots: int, rank: int) -> _Stack:
        """A larger stack holding this one's slots (a new slot or a larger rank: rare, on load only)."""
        new = _Stack(max(slots, self.a.shape[0]), max(rank, self.a.shape[2]), self.a.shape[1], self.b.shape[2],
                     self.a.device)
        n, r = self.a.shape[0], self.a.shape[2]
        new.a[:n, :, :r] = self.a
        new.b[:n, :r, :] = self.b
        return new

    def write(self, slot: int, layer, name: str) -> None:
        """Slot ``slot`` set to adapter ``name`` of ``layer`` (zeros where the layer has no such adapter): two
        copies per layer, the padding past the adapter's rank zeroed only where there is some."""
        import torch

        if name not in layer.lora_A:
            self.a[slot].zero_()
            self.b[slot].zero_()
            return
        a, b = layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach()  # [rank, in], [out, rank]
        rank = a.shape[0]
        if rank < self.a.shape[2]:
            self.a[slot, :, rank:].zero_()
            self.b[slot, rank:].zero_()
        self.a[slot, :, :rank].copy_(a.t())
        torch.mul(b.t(), layer.scaling[name], out=self.b[slot, :rank])

    def delta(self, x, rows: _Rows):
        """The LoRA term of every token of ``x [rows, seq, in]`` (packed: ``[1, tokens, in]``) in float32."""
        import torch

        x = x.to(self.a.dtype)
        if x.is_cpu and _blocked(self.a.shape[1], self.a.shape[2]) and _blocked(self.b.shape[1], self.b.shape[2]):
            flat = x.reshape(-1, x.shape[-1])
            return rows.plan(flat.shape[0], x.shape[1]).apply(flat, self).view(*x.shape[:-1], -1)
        if rows.single is not None and (not x.is_cpu or (rows.chunks is None and x.shape[0] == 1)):
            return x @ self.a[rows.single] @ self.b[rows.single]  # one sequence (a prompt, one row) on its slot
        if rows.chunks is None:  # a matmul per row, each row's shapes as alone (see ``_Rows.per_row``)
            a, b = rows.per_row(self.a, self.b)
            return torch.bmm(torch.bmm(x, a), b)
        count = len(rows.index)  # packed: one token per row first, then each chunk on its own slot
        parts = [self.delta(x[0, :count, None], rows.decode_rows).transpose(0, 1)] if count else []
        start = count
        for slot, length in rows.chunks:
            parts.append(x[:, start:start + length] @ self.a[slot] @ self.b[slot])
            start += length
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def product(self, slot: int, x):
        """``x [tokens, in] @ a[slot] @ b[slot]`` in GEMMs of a multiple of ``BLOCK`` rows (zero rows padded),
        at most ``BLOCK_MAX`` each: what every token gets here whoever else runs (``_blocked``)."""
        import torch
        from torch.nn.functional import pad

        if slot == 0:  # the base model's tokens: no LoRA term
            return x.new_zeros(x.shape[0], self.b.shape[2])
        parts = []
        for start in range(0, x.shape[0], BLOCK_MAX):
            part = x[start:start + BLOCK_MAX]
            short = -part.shape[0] % BLOCK
            out = (pad(part, (0, 0, 0, short)) if short else part) @ self.a[slot] @ self.b[slot]
            parts.append(out[:part.shape[0]] if short else out)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _new_stack(base, slots: int, rank: int, old):
    """The stack for a LoRA layer on ``base`` holding ``slots`` slots of ``rank``: packed bf16 on a prepacked base
    layer (always, so that an adapter's numerics never depend on which others are resident), else float32 (``old``
    grown where there is one)."""
    if "_packed" in base.__dict__:
        old_slots, old_rank = (old.slots, old.rank) if isinstance(old, PackedStack) else (0, 0)
        return PackedStack(base.in_features, base.out_features, max(slots, old_slots), max(rank, old_rank))
    if isinstance(old, _Stack):
        return old.grown(slots, rank)
    return _Stack(slots, rank, base.in_features, base.out_features, base.weight.device)


BLOCK = 4  # a float32 GEMM's rows round alike here in any multiple of 4 rows (1-3 rows, and the tail rows of 5-7 or
# 9-11, round otherwise): ``_blocked`` checks it per shape
BLOCK_MAX = 256  # the largest GEMM of one adapter's tokens (a longer run is split): the probe checks every multiple
# of BLOCK up to it, so a step's decoding rows and a prompt chunk on their adapter (up to the prefill budget, 512,
# plus the rows) run as GEMMs the probe has seen


@functools.lru_cache(maxsize=64)
def _blocked_at(fan_in: int, fan_out: int, threads: int) -> bool:
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BLOCK_MAX, fan_in, generator=generator)
    w = torch.randn(fan_in, fan_out, generator=generator)
    alone = torch.cat([x[i:i + BLOCK] @ w for i in range(0, BLOCK_MAX, BLOCK)])  # each row in a block of its own
    blocks = x.view(-1, BLOCK, fan_in)
    moved = torch.cat([blocks[1::2], blocks[::2]]).reshape(BLOCK_MAX, fan_in)  # every row somewhere else
    ok = all(torch.equal(x[:rows] @ w, alone[:rows]) for rows in range(BLOCK, BLOCK_MAX + 1, BLOCK)) and torch.equal(
        moved @ w, torch.cat([alone.view(-1, BLOCK, fan_out)[1::2], alone.view(-1, BLOCK, fan_out)[::2]]).reshape(
            BLOCK_MAX, fan_out))
    log.info("grouped LoRA: float32 GEMMs [rows, %d] x [%d, %d] at %d thread(s) %s in blocks of %d rows", fan_in,
             fan_in, fan_out, threads, "round alike" if ok else "do NOT round alike (a matmul per row instead)", BLOCK)
    return ok


def _blocked(fan_in: int, fan_out: int) -> bool:
    """Whether a float32 GEMM ``[rows, fan_in] @ [fan_in, fan_out]`` on this CPU, at this thread count, gives every
    row the same bits in every multiple of ``BLOCK`` rows up to ``BLOCK_MAX``, wherever the row sits: probed once
    per shape and thread count (each size, every row; ~64 GEMMs). Then a step's tokens sharing an adapter are one
    GEMM (``_Stack.product``) and each token's LoRA term is still the one it has alone; else the rows take one
    matmul each (``_Rows.per_row``)."""
    import torch

    return _blocked_at(fan_in, fan_out, torch.get_num_threads())


class _Plan:
    """One step's tokens grouped by slot (built once per step, used by every LoRA layer): ``order`` sorts them
    (None: one slot, or already in order), ``groups`` is ``(slot, start, stop)`` in the sorted order."""

    def __init__(self, token_slots: list[int], device, shape: tuple[int, int]) -> None:
        import torch

        order = sorted(range(len(token_slots)), key=token_slots.__getitem__)
        self.groups: list[tuple[int, int, int]] = []
        start = 0
        for slot, run in itertools.groupby(token_slots[token] for token in order):
            stop = start + len(list(run))
            self.groups.append((slot, start, stop))
            start = stop
        self.shape = shape  # the (tokens, seq) of the forward it was built for
        self.token_slots, self.device, self._masks = token_slots, device, {}
        self.order = self.inverse = None
        if order != sorted(order):
            self.order = torch.tensor(order, device=device)
            self.inverse = torch.empty_like(self.order)
            self.inverse[self.order] = torch.arange(len(order), device=device)

    def masked(self, slots: int, rank: int):
        """``packed_lora.masked_columns`` of this step's tokens, built once per step and shape."""
        if (slots, rank) not in self._masks:
            self._masks[slots, rank] = masked_columns(self.token_slots, slots, rank, self.device)
        return self._masks[slots, rank]

    def apply(self, flat, stack: _Stack):
        import torch

        if self.order is None and len(self.groups) == 1:
            return stack.product(self.groups[0][0], flat)
        ordered = flat if self.order is None else flat.index_select(0, self.order)
        out = torch.cat([stack.product(slot, ordered[start:stop]) for slot, start, stop in self.groups])
        return out if self.inverse is None else out.index_select(0, self.inverse)


class _Rows:
    """One forward's rows: each row's slot, or the one slot they all share. Packed (``chunks`` given): the rows
    are one token each at the start of one sequence, then ``(slot, tokens)`` per prompt chunk."""

    def __init__(self, slots: list[int], device, chunks: list[tuple[int, int]] | None = None) -> None:
        import torch

        every = slots + [slot for slot, _ in chunks or []]
        self.any = any(every)
        self.single = every[0] if len(set(every)) == 1 else None
        self.index = torch.tensor(slots, device=device, dtype=torch.long)
        self.rows = len(slots)
        self.chunks = chunks
        # packed: the one-token rows alone, built once per step rather than once per LoRA layer
        self.decode_rows = _Rows(slots, device) if chunks is not None and slots else None
        self._slots, self._device, self._plan = slots, device, None

    def plan(self, tokens: int, seq: int) -> _Plan:
        """Each of the step's ``tokens`` tokens grouped by slot: rows of ``seq`` tokens each, or packed (``chunks``)
        one token per row, then the chunks."""
        if self._plan is None or self._plan.shape != (tokens, seq):
            every = [slot for slot in self._slots for _ in range(1 if self.chunks is not None else seq)]
            every += [slot for slot, length in self.chunks or [] for _ in range(length)]
            if len(every) != tokens:  # a LoRA layer that sees other positions (a head on kept logits only)
                raise ValueError(f"a LoRA layer saw {tokens} tokens, the step has {len(every)} in its rows and "
                                 "chunks: the grouped forward cannot serve it")
            self._plan = _Plan(every, self._device, (tokens, seq))
        return self._plan

    def per_row(self, a, b):
        """Each row's ``a [rows, in, rank]`` and ``b [rows, rank, out]`` for a ``bmm`` (where ``_blocked`` fails):
        a product of one row's token alone, bit for bit whoever else runs (one GEMM over rows sharing a slot
        would round by how many there are: a rerun of the bench once changed 1 of 404 answers that way)."""
        if self.single is not None:  # a view of one slot, no copy
            return a[self.single].expand(self.rows, -1, -1), b[self.single].expand(self.rows, -1, -1)
        return a.index_select(0, self.index), b.index_select(0, self.index)


def _supported(layer, names: list[str]) -> bool:
    from peft.tuners.lora import Linear

    return type(layer) is Linear and not any(
        name in layer.lora_variant or getattr(layer, "lora_bias", {}).get(name, False) for name in names)


class GroupedLora:
    """The serving forward of a PEFT model's resident adapters, by row: ``sync`` after every load or unload,
    then ``forward(model, names, **inputs)`` per step (one adapter name per row, ``BASE`` for none)."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity  # adapters resident at once (engine.max_loras): stacks are sized for them once
        self.slots: dict[str, int] = {}  # resident adapter -> its slot (1..); slot 0 is the base model
        self.grouped = False  # False: PEFT's adapter_names forward (a layer type or variant it does not cover)
        self._rows: _Rows | None = None  # the rows of the forward running now (set only inside ``forward``)
        self._device = None  # the LoRA layers' (the stacks and each step's slot index live there)

    def sync(self, model) -> None:
        """Stack the model's resident adapters into every LoRA layer: a new adapter's slot is written, a dropped
        one's freed; the rest are left as they are (a load costs one adapter's copy, not all of them)."""
        from peft.tuners.lora import LoraLayer

        names = list(getattr(model, "peft_config", {}))
        if self.grouped and set(names) <= set(self.slots):  # only unloads: their slots are freed, nothing written
            self.slots = {n: slot for n, slot in self.slots.items() if n in names}
            return
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        # a LoRA on the output head sees only the kept logits' positions, not the step's tokens
        self.grouped = bool(layers) and all(_supported(layer, names) and layer is not head for layer in layers)
        if not self.grouped:
            self.slots = {}
            for layer in layers:
                layer.__dict__.pop("_grouped", None)
            return
        for gone in [n for n in self.slots if n not in names]:
            del self.slots[gone]
        fresh = [n for n in names if n not in self.slots]
        for name in fresh:
            self.slots[name] = min(set(range(1, len(self.slots) + 2)) - set(self.slots.values()))
        size = max([self.capacity, *self.slots.values()]) + 1  # a stack grown one slot per load copied them all
        for layer in layers:
            self._restack(layer, size, fresh)

    def _restack(self, layer, size: int, fresh: list[str]) -> None:
        rank = max((layer.lora_A[n].weight.shape[0] for n in self.slots if n in layer.lora_A), default=1)
        stack = layer.__dict__.get("_grouped")
        todo = fresh
        if stack is None or not stack.fits(size, rank):
            stack = _new_stack(layer.get_base_layer(), size, rank, stack)
            self._device = stack.device
            todo = list(self.slots)  # a new layer (PEFT injected it for this adapter): every slot
        for name in todo:
            stack.write(self.slots[name], layer, name)
        if "forward" not in layer.__dict__:  # patched once; unpatched it would run PEFT's active adapter on every row
            layer.forward = types.MethodType(self._layer_forward(), layer)
        layer.__dict__["_grouped"] = stack

    def _layer_forward(self):
        grouped = self

        def forward(layer, x, *args, **kwargs):
            rows = grouped._rows
            if rows is None:  # not a serving step (or a model PEFT serves): PEFT's own forward
                return type(layer).forward(layer, x, *args, **kwargs)
            result = layer.base_layer(x, *args, **kwargs)
            if not rows.any:
                return result
            # float32 stacks: the sum in float32, rounded once, as PEFT does; packed: a bf16 term added in bf16
            # (in place: the base layer's output is the step's own)
            return result.add_(layer.__dict__["_grouped"].delta(x, rows))

        return forward

    def forward(self, model, names: list[str], chunks: list[tuple[str, int]] | None = None, **inputs):
        """``model(**inputs)`` with row ``i`` on adapter ``names[i]``; packed (``chunks``, grouped only): the rows
        are the sequence's first tokens, then ``(adapter, tokens)`` per chunk."""
        if not self.grouped:
            if chunks is not None:
                raise ValueError("a packed step needs the grouped LoRA forward: run rows and prompts apart")
            return model(**inputs, adapter_names=names)
        unknown = sorted({n for n in [*names, *(n for n, _ in chunks or [])] if n != BASE and n not in self.slots})
        if unknown:
            raise ValueError(f"adapter(s) {', '.join(unknown)} not resident; resident: {', '.join(self.slots)}")
        slots = None if chunks is None else [(self.slots.get(n, 0), length) for n, length in chunks]
        with self._selected(_Rows([self.slots.get(n, 0) for n in names], self._device, slots)):
            return model(**inputs)

    @contextmanager
    def _selected(self, rows: _Rows):
        self._rows = rows
        try:
            yield
        finally:
            self._rows = None
