"""The `hf` engine: transformers + PEFT behind a batching scheduler.

Requests that arrive together are run as one padded batch (their prompts prefilled a row at a time into one KV
cache, ``hf.prefill_rows``); a batch mixes adapters (PEFT ``adapter_names=``, the base model as ``__base__``).
Adapters live in slots: at most ``max_loras`` are resident, the least recently used unpinned one is evicted to
make room. Generation runs on one worker thread; a per-step hook streams each row's
new text to its request, applies its stop strings and token limit, and stops a row whose client went away.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import EngineConfig
from runtime.engines.base import EngineRequest, EngineResult, SamplingParams, StreamDelta
from runtime.engines.hf import HFRunner, HoldEOS, check_adapter, eos_ids, generate_kwargs, generate_prefilled
from runtime.errors import BadRequestError, MixmergeError, ModelNotFoundError, QueueFullError

log = logging.getLogger(__name__)
BASE = "__base__"


@dataclass
class _Job:
    request: EngineRequest
    prompt: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    emitted: str = ""  # text already sent
    done: bool = False

    def push(self, item: StreamDelta | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class HFEngine:
    kind = "hf"

    def __init__(self, model_path: str | Path, adapters: dict[str, Path] | None = None,
                 config: EngineConfig | None = None, max_queue: int = 64, batch_window_s: float = 0.005) -> None:
        self.config = config or EngineConfig()
        self.runner = HFRunner(model_path, dtype=self.config.dtype, max_batch_size=self.config.max_batch_size)
        self.known: dict[str, str] = {k: str(v) for k, v in (adapters or {}).items()}
        self.resident: OrderedDict[str, None] = OrderedDict()
        self.pinned = set(self.config.pinned_adapters)
        self.max_queue = max_queue
        self.batch_window_s = batch_window_s
        self.adapter_load_ms: dict[str, float] = {}
        self._pending: list[_Job] = []
        self._preparing = 0  # requests admitted whose prompts are still being tokenized
        self._wake = asyncio.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        # Prompts are rendered and counted on their own thread with their own tokenizer: a fast tokenizer's
        # padding state is shared, so one instance must not encode on two threads at once.
        self._prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine-prep")
        self._counter = copy.deepcopy(self.runner.tokenizer)
        self._lock = threading.Lock()  # guards the model between batches and adapter loads
        self._loop_task: asyncio.Task | None = None
        self._closed = False
        self.batches: list[int] = []  # sizes of the batches run (for tests and metrics)
        self.eos = eos_ids(self.runner.model, self.runner.tokenizer)
        for name in list(self.known)[: self.config.max_loras]:
            self._load_now(name)

    # ------------------------------------------------------------------------------------------- adapters
    def _load_now(self, name: str) -> float:
        """Load one adapter into the model; a load that fails leaves the model exactly as it was."""
        from peft import PeftConfig, PeftModel, set_peft_model_state_dict
        from peft.utils import load_peft_weights

        start = time.perf_counter()
        path = Path(self.known[name])
        check_adapter(path)
        model = self.runner.model
        wrapped = hasattr(model, "peft_config")
        try:
            if wrapped:
                model.load_adapter(str(path), adapter_name=name)
            else:  # the first adapter wraps the model: in steps, so a failure can unwrap it again
                config = PeftConfig.from_pretrained(str(path))
                config.inference_mode = True
                model = PeftModel(model, config, adapter_name=name)
                set_peft_model_state_dict(model, load_peft_weights(str(path)), adapter_name=name)
        except Exception as e:
            self.runner.model = _rolled_back(model, name, wrapped)
            raise BadRequestError(f"adapter {path} does not fit this model: {e}", param="lora_path",
                                  fix="load an adapter trained on this engine's base model") from e
        self.runner.model = model.eval()
        self.resident[name] = None
        ms = (time.perf_counter() - start) * 1000
        self.adapter_load_ms[name] = ms
        log.info("loaded adapter %s in %.0f ms", name, ms)
        return ms

    def _ensure_resident(self, names: set[str]) -> None:
        for name in names:
            if name in self.resident:
                self.resident.move_to_end(name)
                continue
            while len(self.resident) >= self.config.max_loras:
                victim = next((n for n in self.resident if n not in self.pinned and n not in names), None)
                if victim is None:
                    raise QueueFullError("no adapter slot is free", fix="raise engine.max_loras")
                self.runner.model.delete_adapter(victim)
                del self.resident[victim]
            self._load_now(name)

    async def load_adapter(self, name: str, path: str) -> float:
        check_adapter(Path(path))
        previous = self.known.get(name)
        self.known[name] = path

        def load() -> float:
            with self._lock:
                if name in self.resident:  # loading a name again replaces its weights
                    self.runner.model.delete_adapter(name)
                    del self.resident[name]
                try:
                    self._ensure_resident({name})
                except MixmergeError:
                    if previous is None:
                        del self.known[name]
                    else:
                        self.known[name] = previous
                    raise
                return self.adapter_load_ms[name]

        return await asyncio.get_running_loop().run_in_executor(self._worker, load)

    async def unload_adapter(self, name: str) -> None:
        if name not in self.known:
            raise ModelNotFoundError(f"adapter '{name}' is not loaded", fix="see GET /v1/models", param="lora_name")

        def unload() -> None:
            with self._lock:
                if name in self.resident:
                    self.runner.model.delete_adapter(name)
                    del self.resident[name]
                del self.known[name]

        await asyncio.get_running_loop().run_in_executor(self._worker, unload)

    def adapters(self) -> dict[str, str]:
        return dict(self.known)

    # ------------------------------------------------------------------------------------------ requests
    async def _submit(self, request: EngineRequest) -> _Job:
        if request.adapter and request.adapter not in self.known:
            raise ModelNotFoundError(f"adapter '{request.adapter}' is not loaded on this engine",
                                     fix="load it with POST /v1/load_lora_adapter", param="model")
        if len(self._pending) + self._preparing >= self.max_queue:
            raise QueueFullError(f"the request queue is full ({self.max_queue})", fix="retry after a moment")
        loop = asyncio.get_running_loop()
        self._preparing += 1
        try:  # a long prompt is tokenized off the event loop: it never stalls other requests or /health
            prompt = await loop.run_in_executor(self._prep, self._prepare, request)
        finally:
            self._preparing -= 1
        job = _Job(request, prompt, loop)
        self._pending.append(job)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._schedule())
        self._wake.set()
        return job

    def _prepare(self, request: EngineRequest) -> str:
        """The prompt rendered and checked against the context (on the prep thread, with its own tokenizer)."""
        prompt = request.prompt if request.prompt is not None else self.runner.render(request.messages or [])
        self.runner.check_fits(len(self._counter(prompt, add_special_tokens=False)["input_ids"]),
                               request.params.max_new_tokens)
        return prompt

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamDelta]:
        job = await self._submit(request)
        try:
            while True:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled = True  # a client that went away stops its row at the next step

    async def generate(self, request: EngineRequest) -> EngineResult:
        text, last = "", None
        async for delta in self.stream(request):
            text += delta.text
            last = delta
        assert last is not None
        return EngineResult(text, last.prompt_tokens, last.completion_tokens, last.finish_reason or "stop")

    def queue_depth(self) -> int:
        return len(self._pending)

    async def health(self) -> bool:
        return not self._closed

    async def aclose(self) -> None:
        self._closed = True
        if self._loop_task:
            self._loop_task.cancel()
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._prep.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------------------------------- scheduler
    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self.batch_window_s)  # let requests that arrive together share a batch
            batch = self._take_batch()
            if batch:
                await loop.run_in_executor(self._worker, self._run_batch, batch)

    def _take_batch(self) -> list[_Job]:
        """Up to max_batch_size pending jobs with the first job's sampling settings, whose adapters fit."""
        live = [j for j in self._pending if not j.cancelled]
        for j in self._pending:
            if j.cancelled:
                j.push(StreamDelta("", "abort"))
        self._pending = live
        if not live:
            return []
        key = _batch_key(live[0].request.params)
        batch, adapters = [], set()
        for job in live:
            name = job.request.adapter
            fits = name is None or name in adapters or len(adapters) < self.config.max_loras
            if _batch_key(job.request.params) == key and fits and len(batch) < self.config.max_batch_size:
                batch.append(job)
                if name:
                    adapters.add(name)
        self._pending = [j for j in live if j not in batch]
        return batch

    def _run_batch(self, batch: list[_Job]) -> None:
        try:
            with self._lock:
                self._ensure_resident({j.request.adapter for j in batch if j.request.adapter})
                self.batches.append(len(batch))
                self._generate(batch)
        except MixmergeError as e:
            for job in batch:
                job.push(e)
        except Exception as e:  # a failed batch fails its requests, never the server
            log.exception("batch of %d failed", len(batch))
            for job in batch:
                job.push(RuntimeError(f"generation failed: {e}"))

    def _generate(self, batch: list[_Job]) -> None:
        import torch
        from transformers import LogitsProcessorList

        tok = self.runner.tokenizer
        inputs = tok([j.prompt for j in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        width = inputs["input_ids"].shape[1]
        limit = max(j.request.params.max_new_tokens for j in batch)  # rows stop at their own limit in the hook
        kwargs = generate_kwargs(batch[0].request.params, limit, tok.pad_token_id)
        if hasattr(self.runner.model, "peft_config"):
            kwargs["adapter_names"] = [j.request.adapter or BASE for j in batch]
        floors = [j.request.params.eos_floor for j in batch]
        if any(floors):
            kwargs["logits_processor"] = LogitsProcessorList([HoldEOS(floors, self.eos, width)])
        hook = _StepHook(self, batch, width, inputs["attention_mask"].sum(dim=1).tolist())
        with torch.inference_mode():
            generate_prefilled(self.runner.model, inputs, stopping_criteria=[hook], **kwargs)
        hook.finish_all()


def _rolled_back(model, name: str, was_wrapped: bool):
    """The model without the adapter a failed load left half-injected."""
    if name in getattr(model, "peft_config", {}):
        if not was_wrapped:
            return model.unload()  # drops every LoRA layer: the base model as it was
        model.delete_adapter(name)
    return model


def _batch_key(p: SamplingParams) -> tuple:
    return (p.temperature, p.top_p, p.seed) if p.temperature > 0 else (0.0,)


class _StepHook:
    """Called by generate after every step: streams new text per row and decides which rows are done."""

    def __init__(self, engine: HFEngine, batch: list[_Job], width: int, prompt_lens: list[int]) -> None:
        self.engine = engine
        self.batch = batch
        self.width = width
        self.prompt_lens = prompt_lens
        self.eos = engine.eos
        self.ids: list[list[int]] = [[] for _ in batch]

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = []
        for i, (job, row) in enumerate(zip(self.batch, input_ids, strict=True)):
            if job.done:
                done.append(True)
                continue
            token = int(row[-1])
            if token in self.eos:
                self._finish(i, "stop")
            else:
                self.ids[i].append(token)
                self._emit(i)
            done.append(job.done)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _emit(self, i: int) -> None:
        job = self.batch[i]
        text = self.engine.runner.tokenizer.decode(self.ids[i], skip_special_tokens=True)
        held = len(self.ids[i]) < job.request.params.eos_floor  # no stop string before min_tokens (as vLLM)
        stop_at = None if held else min((text.index(s) for s in job.request.params.stop if s in text), default=None)
        if stop_at is not None:
            self._send(i, text[:stop_at], "stop")
        elif job.cancelled:
            self._send(i, job.emitted, "abort")
        elif len(self.ids[i]) >= job.request.params.max_new_tokens:
            self._send(i, text.rstrip("\ufffd"), "length")  # a cut multi-byte character is dropped
        elif not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self._send(i, text, None)

    def _finish(self, i: int, reason: str) -> None:
        # a multi-byte character left incomplete is dropped, not sent as U+FFFD (vLLM does the same)
        text = self.engine.runner.tokenizer.decode(self.ids[i], skip_special_tokens=True).rstrip("\ufffd")
        stop_at = min((text.index(s) for s in self.batch[i].request.params.stop if s in text), default=None)
        self._send(i, text if stop_at is None else text[:stop_at], reason)

    def _send(self, i: int, text: str, finish: str | None) -> None:
        job = self.batch[i]
        delta = text[len(job.emitted):] if text.startswith(job.emitted) else ""
        if delta or finish:
            job.emitted += delta
            job.push(StreamDelta(delta, finish, self.prompt_lens[i], len(self.ids[i])))
        if finish:
            job.done = True

    def finish_all(self) -> None:
        """Rows still open when generate returned ran out of tokens."""
        for i, job in enumerate(self.batch):
            if not job.done:
                self._finish(i, "length")
