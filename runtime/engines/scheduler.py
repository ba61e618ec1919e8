"""Continuous batching for the `hf` engine: rows that join and leave one left-padded KV cache between steps.

Why our own and not transformers' (5.19, ``generation/continuous_batching/``): its ``ContinuousBatchingManager``
packs every scheduled token of every request into ONE row (``input_outputs.get_model_kwargs`` builds
``input_ids[:q_size].unsqueeze(0)``, shape ``[1, num_tokens]``, with ``cu_seq_lens_q`` for the boundaries), while
PEFT mixes adapters by row of the batch dimension (``peft/tuners/lora/layer.py``, ``_mixed_batch_forward`` takes
``x[sub_batch_indices]`` per adapter name, and ``adapter_names`` must have one entry per row), so a packed step
can carry one adapter only. Its sampling is also global (``model_runner._sample``: one ``do_sample`` for the
manager, ``torch.multinomial`` without a per-request generator), so per-request greedy/sampled/seeded rows in one
batch and vLLM's per-request ``min_tokens``/``ignore_eos`` are not expressible; ``add_request`` takes only the
temperature/top_k/top_p per-request processor kwargs (``cb_logits_processors.py``).

Here: the running rows share one DynamicCache whose rows are left-padded to a common width. Each step is ONE
forward of every row's pending token and of newcomers' next prompt chunks (under a per-step token budget), packed
into one sequence ``[1, rows + chunk tokens]`` (``packed_step``; ``attention.py`` attends each part over its own
cache): the rows ride in the chunk's matmuls, as vLLM's chunked prefill mixes decode and prefill tokens. One
adapter per row and per chunk (the base model as ``__base__``, run by ``lora.GroupedLora``). Where a model cannot
run packed steps (PEFT's own mixed forward, another attention), ``apart_step`` runs each chunk alone, then the
rows (``[rows, 1]``). The cache is reshaped only when membership changes: a newcomer whose prompt is in is padded
in; finished rows are selected out and columns that are padding in every row are cut.
Every row keeps its own sampling (argmax, or temperature/top_p with its own seeded generator), EOS floor, stop
strings and limit; text is streamed per row as it grows (``Job.take``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from runtime.engines.attention import CHUNK
from runtime.engines.base import EngineRequest, StreamDelta
from runtime.engines.lora import BASE, GroupedLora

__all__ = ["BASE", "Batch", "Job", "apart_step", "next_tokens", "packed_step", "prefill"]


@dataclass(eq=False)
class Job:
    request: EngineRequest
    prompt_ids: list[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    emitted: str = ""  # text already sent
    searched: int = 0  # characters of the text already looked through for stop strings
    done: bool = False
    ids: list[int] = field(default_factory=list)  # generated tokens (an EOS that ended the row excluded)
    filled: int = 0  # prompt tokens in `cache` so far
    cache: object | None = None  # the row's own DynamicCache while it is prefilled
    generator: object | None = None  # the row's torch.Generator when it samples
    lane: object | None = None  # the folded copy it runs on (adaptive.Lane); None: the served (LoRA) model

    @property
    def adapter(self) -> str:
        return self.request.adapter or BASE

    def push(self, item: StreamDelta | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # its event loop is closed: no one is left to tell, and the step must go on
            self.cancelled = True

    # ---------------------------------------------------------------------------- text, stops, limits
    def take(self, token: int, tokenizer, eos: set[int]) -> None:
        """One new token: stream the text it completes, or end the row (EOS, stop string, limit, cancel). As vLLM:
        stop strings are looked for in the new text only (never in what was decoded below the row's
        ``min_tokens`` floor), and the last ``len(longest stop) - 1`` characters are held back until the row
        ends or they can no longer begin a stop string, so no part of one is ever sent."""
        if token in eos:
            self.finish("stop", tokenizer)
            return
        self.ids.append(token)
        params = self.request.params
        text = tokenizer.decode(self.ids, skip_special_tokens=True)
        held = len(self.ids) < params.eos_floor  # no stop string before min_tokens (as vLLM)
        longest = max(map(len, params.stop), default=0)
        stop_at = None if held or not longest else min(
            (i for s in params.stop if (i := text.find(s, max(self.searched - longest + 1, 0))) >= 0), default=None)
        self.searched = len(text)
        if stop_at is not None:
            self._send(text[:stop_at], "stop")
        elif self.cancelled:
            self._send(self.emitted, "abort")
        elif len(self.ids) >= params.max_new_tokens:
            self._send(text.rstrip("\ufffd"), "length")  # a cut multi-byte character is dropped
        elif not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self._send(text[:len(text) - longest + 1] if longest else text, None)

    def finish(self, reason: str, tokenizer) -> None:
        # a multi-byte character left incomplete is dropped, not sent as U+FFFD (vLLM does the same); stop
        # strings were looked for as the text grew (``take``)
        self._send(tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd"), reason)

    def abort(self) -> None:
        self._send(self.emitted, "abort")

    def _send(self, text: str, finish: str | None) -> None:
        delta = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        if delta or finish:
            self.emitted += delta
            self.push(StreamDelta(delta, finish, len(self.prompt_ids), len(self.ids)))
        if finish:
            self.done = True
            self.cache = None


# ------------------------------------------------------------------------------------------------ steps
def forward(model, lora: GroupedLora | None, names: list[str], chunks: list[tuple[str, int]] | None = None,
            **inputs):
    """One forward of ``model``; with ``lora`` (a PEFT model's adapters), row ``i`` on adapter ``names[i]`` (packed:
    then each chunk on its own)."""
    return model(**inputs) if lora is None else lora.forward(model, names, chunks, **inputs)


# Single-token steps: a bf16 Linear over ONE token takes another kernel (a matrix-vector product) than over two
# or more and rounds a few outputs differently (SmolLM2's layer-27 down_proj: 1 of 576 outputs; every MLP weight
# with random activations: 2 of 109,440), while any count from 2 to 64 gives the same bits. A row decoding alone
# and the same row beside others then drift apart from the first such output on. A packed step of a single token
# runs it twice (the copy with a throwaway cache), so a row's numerics do not depend on what else runs
# (benchmarks/README.md, offline_eval.py).


def packed_step(model, lora: GroupedLora | None, batch: Batch, fills: list[tuple[Job, int]]):
    """ONE forward of every row's pending token and the next ``n`` prompt tokens of each ``(job, n)`` in
    ``fills``, packed into one sequence (``attention.Packed``). Returns the rows' logits ``[rows, vocab]``
    (float32, None without rows) and ``[(job, logits)]`` for the newcomers whose whole prompt is now in."""
    import torch
    from transformers import DynamicCache

    from runtime.engines.attention import Packed

    rows, device = len(batch), model.device
    ids, positions = list(batch.pending), batch.mask.sum(dim=1).tolist() if rows else []
    step = Packed(rows, batch.cache)
    if rows:
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(rows, 1)], dim=1)
        if device.type == "cpu":  # each row's real columns: from its first real token to the new one
            width = batch.mask.shape[1]
            step.spans = [(start, width) for start in batch.mask.argmax(dim=1).tolist()]
        else:  # the batched product under a mask
            step.mask = batch.mask.bool()[:, None, None, :]
    keep, complete = list(range(rows)), []
    chunk_adapters = []
    for job, n in fills:
        job.cache = job.cache if job.cache is not None else DynamicCache()
        chunk = job.prompt_ids[job.filled:job.filled + n]
        ids += chunk
        positions += range(job.filled, job.filled + len(chunk))
        step.chunks.append((job.cache, len(chunk)))
        chunk_adapters.append((job.adapter, len(chunk)))
        job.filled += len(chunk)
        if job.filled == len(job.prompt_ids):
            keep.append(len(ids) - 1)
            complete.append(job)
    if len(ids) == 1:  # never one token alone (see the note above)
        ids, positions = ids * 2, positions * 2
        step.chunks.append((DynamicCache(), 1))  # a throwaway copy: its own cache, its logits not kept
        chunk_adapters.append((batch.rows[0].adapter if rows else fills[0][0].adapter, 1))
    kept = len(keep)
    if kept == 1:  # the vocabulary projection too: never over one position alone
        keep.append(keep[0])
    out = forward(model, lora, [job.adapter for job in batch.rows], chunk_adapters,
                  input_ids=torch.tensor([ids], device=device), position_ids=torch.tensor([positions], device=device),
                  use_cache=False, mixmerge_step=step,
                  logits_to_keep=torch.tensor(keep, dtype=torch.long, device=device),
                  attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device))  # 4D: passed on, unused
    layers = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    if len(step.layers_seen) != layers.num_hidden_layers:  # an attention that drops **kwargs saw a plain causal
        raise RuntimeError(  # sequence of unrelated rows: never return its logits
            f"a packed step reached {len(step.layers_seen)} of {layers.num_hidden_layers} attention layers: this "
            f"architecture ({layers.model_type}) does not pass attention keywords on (attention.PACKED_ARCHITECTURES)")
    logits = out.logits[0, :kept].float()
    return (logits[:rows] if rows else None), list(zip(complete, logits[rows:], strict=True))


def apart_step(model, lora: GroupedLora | None, batch: Batch, fills: list[tuple[Job, int]]):
    """``packed_step``'s result from a forward per prompt chunk and one of the rows (for a model a packed step
    cannot run: PEFT's own mixed-adapter forward, another attention implementation, sliding windows)."""
    complete = []
    for job, n in fills:
        logits = prefill(model, job, n, lora)
        if logits is not None:
            complete.append((job, logits))
    return (batch.step(model, lora) if len(batch) else None), complete


def prefill(model, job: Job, budget: int, lora: GroupedLora | None):
    """Up to ``budget`` more prompt tokens of one row into its own cache; the last position's logits once the
    whole prompt is in (else None)."""
    import torch
    from transformers import DynamicCache

    if job.cache is None:
        job.cache = DynamicCache()
    chunk = job.prompt_ids[job.filled:job.filled + budget]
    out = forward(model, lora, [job.adapter], input_ids=torch.tensor([chunk], device=model.device),
                  past_key_values=job.cache, use_cache=True, logits_to_keep=last_position(len(chunk), model.device))
    job.filled += len(chunk)
    return out.logits[0, -1].float() if job.filled == len(job.prompt_ids) else None


def last_position(width: int, device=None):
    """``logits_to_keep`` for the last of ``width`` positions, as an index, not ``1``: ``1`` slices the hidden
    states to a view whose batch stride is the whole prompt's, and where the LM head's weight does not require
    grad (PEFT freezes it) ``torch.matmul`` then does not fold the batch into one matmul but copies the whole
    weight for a ``bmm`` (aten ``should_fold``): 110 ms of a 55-token SmolLM2-135M prefill, 2.5x the prompt's
    own cost. The index gathers a fresh row and the head is one small matmul."""
    import torch

    return torch.tensor([width - 1], device=device)


def next_tokens(logits, jobs: list[Job], eos: list[int]) -> list[int]:
    """One token per row from its logits ``[rows, vocab]``: EOS held below the row's floor, then argmax or the
    row's own seeded sampling."""
    import torch

    for i, job in enumerate(jobs):
        if len(job.ids) < job.request.params.eos_floor:
            logits[i, eos] = float("-inf")
    picked = logits.argmax(dim=-1).tolist()
    for i, job in enumerate(jobs):
        params = job.request.params
        if not params.greedy:
            if job.generator is None:
                job.generator = torch.Generator()
                if params.seed is None:
                    job.generator.seed()
                else:
                    job.generator.manual_seed(params.seed)
            # on the CPU, with the row's CPU generator: a seed draws the same tokens on every device
            picked[i] = _sample(logits[i].cpu() / params.temperature, params.top_p, job.generator)
    return picked


def _sample(scores, top_p: float, generator) -> int:
    """Nucleus sampling over one row (transformers' TopPLogitsWarper: the smallest set of tokens whose
    probability reaches top_p, at least one)."""
    import torch

    if top_p < 1.0:
        ordered, index = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - top_p)
        drop[-1] = False
        scores = scores.scatter(0, index, ordered.masked_fill(drop, float("-inf")))
    return int(torch.multinomial(scores.softmax(dim=-1), 1, generator=generator))


class Batch:
    """The rows decoding together: one left-padded KV cache, its padding mask and each row's pending token. The
    cache keeps at least ``ROOM`` padding columns left of its longest row, so that the decode attention's window
    of whole chunks ending at the newest column never starts before the cache does (``attention._chunked_rows``);
    they are masked, as any padding is."""

    ROOM = CHUNK - 1

    def __init__(self) -> None:
        self.rows: list[Job] = []
        self.pending: list[int] = []  # the token each row feeds next (sampled, not yet in the cache)
        self.cache = None
        self.mask = None  # [rows, width]: 1 where the cache holds a real token

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, job: Job, token: int) -> None:
        """A prefilled row (its cache holds the whole prompt) with its first token to feed."""
        import torch
        from torch.nn.functional import pad

        cache, length = job.cache, job.filled
        job.cache = None
        row_mask = torch.ones(1, length, dtype=torch.long, device=cache.layers[0].keys.device)
        if self.cache is None:
            for layer in cache.layers:
                layer.keys, layer.values = (pad(x, (0, 0, self.ROOM, 0)) for x in (layer.keys, layer.values))
            self.cache, self.mask = cache, pad(row_mask, (self.ROOM, 0))
        else:
            width = max(self.mask.shape[1], length + self.ROOM)
            grow, room = width - self.mask.shape[1], width - length
            for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([pad(mine.keys, (0, 0, grow, 0)), pad(theirs.keys, (0, 0, room, 0))])
                mine.values = torch.cat([pad(mine.values, (0, 0, grow, 0)), pad(theirs.values, (0, 0, room, 0))])
            self.mask = torch.cat([pad(self.mask, (grow, 0)), pad(row_mask, (room, 0))])
        self.rows.append(job)
        self.pending.append(token)

    def leave(self) -> list[Job]:
        """Drop the rows that are done; cut the columns that are padding in every row left, but ``ROOM``. Returns
        the dropped."""
        import torch

        keep = [i for i, job in enumerate(self.rows) if not job.done]
        if len(keep) == len(self.rows):
            return []
        gone = [job for job in self.rows if job.done]
        if not keep:
            self.__init__()
            return gone
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[index]
        start = max(int(mask.any(dim=0).long().argmax()) - self.ROOM, 0)  # ROOM before the first column in use
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self.mask = mask[:, start:]
        self.rows = [self.rows[i] for i in keep]
        self.pending = [self.pending[i] for i in keep]
        return gone

    def step(self, model, lora: GroupedLora | None):
        """One forward of every row's pending token; returns the logits ``[rows, vocab]`` in float32."""
        import torch

        rows = len(self.rows)
        mask = torch.cat([self.mask, self.mask.new_ones(rows, 1)], dim=1)
        positions = self.mask.sum(dim=1, keepdim=True)  # real tokens before the pending one
        out = forward(model, lora, [job.adapter for job in self.rows],
                      input_ids=torch.tensor(self.pending, device=mask.device)[:, None],
                      attention_mask=mask, position_ids=positions, past_key_values=self.cache, use_cache=True)
        self.mask = mask
        return out.logits[:, -1].float()

    def packed(self, step, model, lora: GroupedLora | None, fills: list[tuple[Job, int]], tokenizer, eos: set[int],
               eos_list: list[int]) -> list[Job]:
        """One packed step (``step``: ``packed_step``) of the rows and the newcomers' chunks in ``fills``: the rows'
        next tokens taken, each newcomer whose prompt is in samples its first token and joins, ended rows leave.
        Returns the newcomers that are prefilled (joined, or already done)."""
        logits, prefilled = step(model, lora, self, fills)
        if logits is not None:
            self.advance(logits, tokenizer, eos, eos_list)
        for job, last in prefilled:
            token = next_tokens(last[None], [job], eos_list)[0]
            job.take(token, tokenizer, eos)
            if not job.done:
                self.join(job, token)
        self.leave()
        return [job for job, _ in prefilled]

    def advance(self, logits, tokenizer, eos: set[int], eos_list: list[int]) -> None:
        """Every row's next token from its logits ``[rows, vocab]``: taken (streamed, or ending the row) and fed
        next; rows that ended stay until ``leave``."""
        tokens = next_tokens(logits, self.rows, eos_list)
        for job, token in zip(self.rows, tokens, strict=True):
            job.take(token, tokenizer, eos)
        self.pending = tokens
