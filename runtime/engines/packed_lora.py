"""Grouped LoRA on a prepacked bf16 model: each resident adapter as a pair of oneDNN-packed bf16 linears.

Where the base model's linears are prepacked (``prepacked.py``: bf16 on a CPU whose oneDNN reproduces the stock
linear), the LoRA layers hold each resident adapter as a pair of packed bf16 linears (``PackedStack``): the LoRA
term is computed and rounded in bf16, close to how the adapter was trained (bf16 autocast runs lora_A and lora_B in
bf16) and to how vLLM serves it (LoRA weights in the model's dtype), and added to the base output in bf16. oneDNN
gives a token the same bits at any row count up to 256 here (probed per shape and thread count: ``packed_alike``),
so no padding either. A 512-token prompt chunk on the mix took 1,309-1,347 ms in float32 GEMMs against 1,080-1,165
for the base model, and 1,144-1,153 packed; on the first of the four experts 1,345-1,637 ms, packed 1,133-1,141
(``benchmarks/README.md``, decode_step.py): the float32 products over a chunk ([512, 16] x [16, 4864] writes 10 MB)
cost 5x the bf16 ones.

``lora.GroupedLora`` chooses the stack (``lora._new_stack``): a ``PackedStack`` on every LoRA layer whose base
linear is prepacked, the float32 ``lora._Stack`` elsewhere. A stack is handed each step's ``_Rows`` and plans
(``lora._Plan``: ``groups``, ``apply``, ``masked``).
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)
__all__ = ["FUSE_MAX", "PACKED_MAX", "PackedStack", "fused_alike", "masked_columns", "packed_alike"]


def masked_columns(token_slots: list[int], slots: int, rank: int, device=None):
    """``[tokens, slots x rank]`` bool: True on the columns of every slot but the token's own (all of them for slot
    0, the base model's tokens): what ``PackedStack.fused`` zeroes."""
    import torch

    own = torch.tensor(token_slots, device=device)[:, None]
    column = torch.arange(slots * rank, device=device)[None] // rank
    return (column != own) | (own == 0)


class PackedStack:
    """One LoRA layer's resident adapters as oneDNN-prepacked bf16 linears, an ``(A, B)`` pair per slot at the
    adapter's own rank (scaling in B): every LoRA layer of a model whose base linears are prepacked (``prepacked.py``:
    a CPU, bf16, oneDNN reproducing the stock linear). The LoRA term is two bf16 GEMMs per adapter in use over its
    tokens, in runs of at most ``PACKED_MAX``, rounded to bf16: close to the math the adapter was trained in (bf16
    autocast runs lora_A and lora_B in bf16; the scaling is folded into B here) and what vLLM serves (LoRA weights in
    the model's dtype), 4-5x faster than float32 GEMMs over a prompt chunk here. Where ``packed_alike`` finds, at
    the step's thread count, that a run's rows round by how many there are, each token takes a pair of its own.

    A step of few tokens on several adapters (decoding rows on the experts) runs as one pair instead: every slot's
    A side by side (``[slots x rank, in]``), each token's other slots' columns zeroed, every slot's B stacked
    (``[out, slots x rank]``): two GEMMs a layer, not two per adapter. It is used only where the probe finds its
    bits equal to the per-adapter pairs' for the resident ranks (``fused_alike``), so which way a step runs
    changes no answer. Held: the pairs, the dense bf16 ``a`` and ``b`` and, once used, their packed copy."""

    def __init__(self, fan_in: int, fan_out: int, slots: int, rank: int) -> None:
        import torch

        self.fan_in, self.fan_out, self.slots, self.rank = fan_in, fan_out, slots, rank
        self.device = torch.device("cpu")
        self.pairs: dict[int, tuple] = {}  # slot -> packed (A [rank, in], B [out, rank]); none: no term
        self.ranks: dict[int, int] = {}  # slot -> its adapter's rank here
        self.a = torch.zeros(slots * rank, fan_in, dtype=torch.bfloat16)  # every slot's A, for the one pair
        self.b = torch.zeros(fan_out, slots * rank, dtype=torch.bfloat16)  # and B (zeros past a slot's rank)
        self._fused: tuple | None = None  # (A, B) above packed; built at the first step that uses it

    def fits(self, slots: int, rank: int) -> bool:
        return slots <= self.slots and rank <= self.rank

    def write(self, slot: int, layer, name: str) -> None:
        rows = slice(slot * self.rank, (slot + 1) * self.rank)
        self.a[rows].zero_()
        self.b[:, rows].zero_()
        self._fused = None
        if name not in layer.lora_A:
            self.pairs.pop(slot, None)
            self.ranks.pop(slot, None)
            return
        self.put(slot, layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach() * layer.scaling[name])

    def put(self, slot: int, a, b) -> None:
        """Slot ``slot`` holds ``a [rank, in]`` and ``b [out, rank]`` (scaling in b), in bf16."""
        import torch

        a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
        columns = slice(slot * self.rank, slot * self.rank + a.shape[0])
        self.pairs[slot], self.ranks[slot] = (reorder(a), reorder(b)), a.shape[0]
        self.a[columns], self.b[:, columns] = a, b
        self._fused = None

    def delta(self, x, rows):
        """The LoRA term of every token of ``x [rows, seq, in]`` (packed: ``[1, tokens, in]``) in bf16."""
        import torch

        x = x.to(torch.bfloat16)
        flat = x.reshape(-1, x.shape[-1])
        plan = rows.plan(flat.shape[0], x.shape[1])
        if (flat.shape[0] <= FUSE_MAX and sum(slot != 0 for slot, _, _ in plan.groups) > 1
                and fused_alike(self.fan_in, self.fan_out, self.rank, self.layout())):
            out = self.fused(flat, plan.masked(self.slots, self.rank))
        else:
            out = plan.apply(flat, self)
        return out.view(*x.shape[:-1], -1)

    def layout(self) -> tuple[int, ...]:
        """Each slot's rank here (0: none), what ``fused_alike`` probes."""
        return tuple(self.ranks.get(slot, 0) for slot in range(self.slots))

    def fused(self, x, masked):
        """Every token's term in one pair of GEMMs: ``masked [tokens, slots x rank]`` is True on the columns of
        the slots other than the token's own (zeroed, whatever they hold)."""
        if self._fused is None:
            self._fused = (reorder(self.a), reorder(self.b))
        return linear(linear(x, self._fused[0]).masked_fill_(masked, 0), self._fused[1])

    def product(self, slot: int, x):
        """``x [tokens, in] @ A @ B`` of slot ``slot``: each token's bits as alone (``packed_alike``, checked at
        this thread count; else a pair per token)."""
        import torch

        pair = self.pairs.get(slot)
        if pair is None:  # the base model's tokens, or an adapter that leaves this layer alone
            return x.new_zeros(x.shape[0], self.fan_out)
        run = PACKED_MAX if packed_alike(self.fan_in, self.ranks[slot], self.fan_out) else 1
        parts = [linear(linear(x[start:start + run], pair[0]), pair[1]) for start in range(0, x.shape[0], run)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def reorder(weight):
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())


def linear(x, packed):
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


PACKED_MAX = 256  # the most tokens of one packed pair's GEMM (a longer run is split): the probe checks every count
# up to it, so a step's decoding rows and a 512-token prompt chunk on their adapter run as GEMMs it has seen
FUSE_MAX = 64  # the most tokens a fused step takes (decoding rows; a prompt chunk's tokens take their adapter's
# pair: the one pair's B over every slot's rank costs slots x the flops there)


@functools.lru_cache(maxsize=64)
def fused_alike_at(fan_in: int, fan_out: int, rank: int, layout: tuple[int, ...], threads: int) -> bool:
    import torch

    generator = torch.Generator().manual_seed(1)
    stack = PackedStack(fan_in, fan_out, len(layout), rank)
    for slot, r in enumerate(layout):
        if r:
            stack.put(slot, torch.randn(r, fan_in, generator=generator) * 0.05,
                      torch.randn(fan_out, r, generator=generator) * 0.05)
    x = torch.randn(FUSE_MAX, fan_in, generator=generator).to(torch.bfloat16)
    token_slots = torch.randint(0, len(layout), (FUSE_MAX,), generator=generator).tolist()
    alone = torch.cat([stack.product(slot, x[i:i + 1]) for i, slot in enumerate(token_slots)])
    ok = all(torch.equal(stack.fused(x[:n], masked_columns(token_slots[:n], len(layout), rank)), alone[:n])
             for n in range(1, FUSE_MAX + 1))
    log.info("grouped LoRA: one bf16 pair over slots of ranks %s (stacked at %d) [%d -> %d] at %d thread(s) %s",
             layout, rank, fan_in, fan_out, threads,
             "gives each adapter's own bits" if ok else "does NOT (a pair per adapter)")
    return ok


def fused_alike(fan_in: int, fan_out: int, rank: int, layout: tuple[int, ...]) -> bool:
    """Whether ``PackedStack.fused`` over slots of the ranks ``layout`` (stacked at ``rank`` each) gives every
    token the bits of its own adapter's pair (``product``), at every token count up to ``FUSE_MAX``: probed once
    per layout and thread count."""
    import torch

    return fused_alike_at(fan_in, fan_out, rank, layout, torch.get_num_threads())


@functools.lru_cache(maxsize=64)
def packed_alike_at(fan_in: int, rank: int, fan_out: int, threads: int) -> bool:
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(PACKED_MAX, fan_in, generator=generator).to(torch.bfloat16)
    a = reorder((torch.randn(rank, fan_in, generator=generator) * 0.05).to(torch.bfloat16))
    b = reorder((torch.randn(fan_out, rank, generator=generator) * 0.05).to(torch.bfloat16))

    def term(tokens):
        return linear(linear(tokens, a), b)

    every = term(x)
    moved = torch.randperm(PACKED_MAX, generator=generator)
    ok = (all(torch.equal(term(x[:rows]), every[:rows]) for rows in range(1, PACKED_MAX))
          and all(torch.equal(term(x[i:i + 1]), every[i:i + 1]) for i in range(64))
          and torch.equal(term(x[moved]), every[moved]))
    log.info("grouped LoRA: bf16 packed [rows, %d] x [%d, %d] x [%d, %d] at %d thread(s) %s", fan_in, fan_in, rank,
             rank, fan_out, threads, "round alike at any row count" if ok else "do NOT round alike (a pair a token)")
    return ok


def packed_alike(fan_in: int, rank: int, fan_out: int) -> bool:
    """Whether oneDNN's packed bf16 LoRA product ``[rows, fan_in] x A x B`` (rank ``rank``) gives every row the same
    bits at every row count up to ``PACKED_MAX``, alone and wherever it sits: probed once per shape and thread
    count, at the step that first needs it. Else ``PackedStack.product`` runs a pair per token."""
    import torch

    return packed_alike_at(fan_in, rank, fan_out, torch.get_num_threads())
