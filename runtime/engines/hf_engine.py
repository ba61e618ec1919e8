"""The `hf` engine: transformers + PEFT behind a continuous-batching scheduler (``scheduler.py`` says why not
transformers' own).

One worker thread loops: it runs model changes queued between steps (adapter loads and unloads), admits waiting
requests, and runs one step: every running row's next token and newcomers' prompt chunks (``prefill_budget`` tokens
per step at most) in one packed forward (``scheduler.packed_step``). A request that arrives mid-answer joins at the
next step; a row that ends (EOS, stop string, limit, client gone) leaves at once. A batch mixes adapters (one
grouped LoRA forward per layer, ``lora.py``; the base model as ``__base__``) and sampling settings. Adapters live in
slots (``slots.py``): at most ``max_loras`` resident, the least recently used unpinned one that no running row uses
evicted to make room. An adapter loaded at runtime is checked and read on a loader thread; only its injection (on
meta, weights assigned: ``low_cpu_mem_usage``) and the copy of its weights into the grouped forward's stacks hold
the model, between steps. With ``engine.adaptive``, a dominant adapter's new rows run on a folded copy of the model
(``adaptive.py``): each model's rows decode in their own batch, one forward per model per step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runtime.config import EngineConfig
from runtime.engines.adaptive import Placement, weight_bytes
from runtime.engines.attention import packable
from runtime.engines.base import EngineRequest, EngineResult, StreamDelta, joined
from runtime.engines.hf import HFRunner, eos_ids
from runtime.engines.lora import GroupedLora
from runtime.engines.scheduler import BASE, Batch, Job, apart_step, packed_step
from runtime.engines.slots import AdapterSlots, needs_dense
from runtime.engines.threads import TEAMS, fit, one_thread
from runtime.errors import (
    BadRequestError,
    EngineUnavailableError,
    MixmergeError,
    ModelNotFoundError,
    QueueFullError,
)

SPEED = 1  # bump when the engine's speed or memory changes for the same answers (1: prepacked linears, the
# dense weights' pages released): the bench's measured phases key on it, its cached answers (keyed on
# attention.NUMERICS) do not

log = logging.getLogger(__name__)
__all__ = ["BASE", "HFEngine"]


class _Later(Exception):
    """A model change that must wait for the rows using its adapter to finish."""


class HFEngine:
    kind = "hf"

    def __init__(self, model_path: str | Path, adapters: dict[str, Path] | None = None,
                 config: EngineConfig | None = None, max_queue: int = 64, prefill_budget: int = 512) -> None:
        self.config = config or EngineConfig()
        one_thread()  # loading runs on the calling thread: no OpenMP team of its own (threads.py)
        known = {k: str(v) for k, v in (adapters or {}).items()}
        dense = [f"{n}: {why}" for n, p in known.items() if (why := needs_dense(Path(p)))]
        if dense and self.config.prepack:
            log.info("hf engine: dense weights kept (no prepacked linears) for %s", "; ".join(dense))
        self.runner = HFRunner(model_path, dtype=self.config.dtype, max_batch_size=self.config.max_batch_size,
                               device=self.config.device, pack=self.config.prepack and not dense)
        self.slots = AdapterSlots(self.runner, known, self.config.max_loras, self.config.pinned_adapters, self._busy)
        self.max_queue = max_queue
        # prompt tokens per step: 512 took 32 four-task prompts (~205 tokens) x 32 tokens at c=8 from 57 to 77-83 out
        # tok/s against 256 (newcomers join sooner, batches run fuller); 1024 gave 81-91 at a 1.5x TTFT p50
        self.prefill_budget = prefill_budget
        self.eos = eos_ids(self.runner.model, self.runner.tokenizer)
        self._eos_list = sorted(self.eos)
        self._pending: deque[Job] = deque()
        self._ops: list[tuple[Callable[[], object], concurrent.futures.Future]] = []
        self._changing: Counter[str] = Counter()  # queued loads/unloads per adapter: no new rows for it meanwhile
        self._preparing = 0  # requests admitted whose prompts are still being tokenized
        self._cond = threading.Condition()  # guards _pending, _ops, _running between the loop and the worker
        self._running = False
        self.batch = Batch()
        self._filling: list[Job] = []  # admitted, prompt being prefilled
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        TEAMS.join()  # counted alive; the share of the cores goes by the engines working (threads.py)
        self._team = self._worker.submit(fit, 0).result()  # the forward thread's OpenMP threads
        one_thread()  # (fit set torch's global count too: threads started later read it)
        log.info("hf engine: %d torch threads (%d hf engine(s) in this process)", self._team, TEAMS.engines)
        # Prompts are rendered and counted on their own thread with their own tokenizer: a fast tokenizer's
        # padding state is shared, so one instance must not encode on two threads at once.
        self._prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine-prep", initializer=one_thread)
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine-loader",
                                          initializer=one_thread)
        self._counter = copy.deepcopy(self.runner.tokenizer)
        self._closed = False
        self.batches: deque[int] = deque(maxlen=4096)  # rows in each recent decode step (for tests and metrics)
        adaptive = self.config.adaptive
        self.placement = None if adaptive is None else Placement(
            adaptive, weight_bytes(self.runner.model), self.slots.fold, self._post)
        try:
            for name in list(known)[: self.config.max_loras]:
                self.slots.install(name, *self.slots.read(Path(known[name])))
        except BaseException:  # a bad start adapter: no engine, so its share of the cores and threads go back
            self._shutdown()
            raise

    # ------------------------------------------------------------------------------------------- adapters
    def _busy(self) -> set[str]:
        return {job.adapter for job in [*self._rows(), *self._filling]} - {BASE}

    def placement_status(self) -> dict[str, object] | None:
        return None if self.placement is None else self.placement.status()

    async def load_adapter(self, name: str, path: str) -> float:
        start = time.perf_counter()
        slots = self.slots
        read = await asyncio.get_running_loop().run_in_executor(self._loader, slots.read, Path(path), True)

        def install() -> None:
            if name in self._busy():
                raise _Later
            if name in slots.resident:  # loading a name again replaces its weights
                slots.drop(name)
            if self.placement:  # a folded copy of the old weights takes no new rows
                self.placement.forget(name)
            if not slots.make_room(name):
                raise _Later
            slots.install(name, *read)
            slots.known[name] = path

        await self._between_steps(install, name)
        slots.load_ms[name] = ms = (time.perf_counter() - start) * 1000
        log.info("loaded adapter %s in %.0f ms (%.1f ms of it holding the model)", name, ms, slots.lock_ms[name])
        return ms

    async def unload_adapter(self, name: str) -> None:
        slots = self.slots
        if name not in slots.known:
            raise ModelNotFoundError(f"adapter '{name}' is not loaded", fix="see GET /v1/models", param="lora_name")

        def unload() -> None:
            if name in self._busy():
                raise _Later
            if name in slots.resident:
                slots.drop(name)
            if self.placement:
                self.placement.forget(name)
            slots.known.pop(name, None)

        await self._between_steps(unload, name)

    def adapters(self) -> dict[str, str]:
        return dict(self.slots.known)

    # ------------------------------------------------------------------------------------------ requests
    async def _submit(self, request: EngineRequest) -> Job:
        if self._closed:
            raise QueueFullError("the engine is shutting down", fix="retry on another replica")
        if request.adapter and request.adapter not in self.slots.known:
            raise ModelNotFoundError(f"adapter '{request.adapter}' is not loaded on this engine",
                                     fix="load it with POST /v1/load_lora_adapter", param="model")
        if len(self._pending) + self._preparing >= self.max_queue:
            raise QueueFullError(f"the request queue is full ({self.max_queue})", fix="retry after a moment")
        loop = asyncio.get_running_loop()
        self._preparing += 1
        try:  # a long prompt is tokenized off the event loop: it never stalls other requests or /health
            ids = await loop.run_in_executor(self._prep, self._prepare, request)
        finally:
            self._preparing -= 1
        job = Job(request, ids, loop)
        with self._cond:
            if self._closed:  # closed while its prompt was tokenized: nothing would ever answer it
                raise QueueFullError("the engine is shutting down", fix="retry on another replica")
            self._pending.append(job)
            self._kick()
        return job

    def _prepare(self, request: EngineRequest) -> list[int]:
        """The prompt rendered, tokenized and checked against the context (on the prep thread, own tokenizer)."""
        prompt = request.prompt if request.prompt is not None else self.runner.render(request.messages or [])
        ids = self._counter(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise BadRequestError("the prompt has no tokens", fix="send a non-empty prompt", param="prompt")
        self.runner.check_fits(len(ids), request.params.max_new_tokens)
        return ids

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
            job.cancelled = True  # a client that went away frees its row at the next step

    async def generate(self, request: EngineRequest) -> EngineResult:
        return await joined(self.stream(request))

    def queue_depth(self) -> int:
        return len(self._pending)

    def running(self) -> int:
        return len(self._rows()) + len(self._filling)

    def _lanes(self) -> list[tuple[Batch, object, GroupedLora | None]]:
        """Each model's batch: the served model's (LoRA rows) and a folded copy's, if one is placed."""
        served = [(self.batch, self.runner.model, self.slots.served())]
        return served + [(lane.batch, lane.model, None) for lane in (self.placement.lanes() if self.placement else [])]

    def _rows(self) -> list[Job]:
        return [job for batch, _, _ in self._lanes() for job in batch.rows]

    async def health(self) -> bool:
        return not self._closed

    async def aclose(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        if not self._closed:
            TEAMS.leave()
        self._closed = True
        with self._cond:
            for job in self._pending:
                job.abort()
            self._pending.clear()
            self._fail_ops()
        self._worker.shutdown(wait=False, cancel_futures=True)
        if self.placement:
            self.placement.close()
        self._prep.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------------------------------- scheduler
    def _kick(self) -> None:
        """Start the worker loop if it is not running (call with ``_cond`` held)."""
        if not self._running and not self._closed:
            self._running = True
            self._worker.submit(self._serve)

    def _between_steps(self, change: Callable[[], object], adapter: str) -> asyncio.Future:
        """Run a model change on the worker between two steps; it may raise _Later to wait for busy rows."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def done(_) -> None:  # this change ran (or failed): the adapter takes new rows once none is queued
            with self._cond:
                self._changing[adapter] -= 1
                if self._changing[adapter] <= 0:
                    del self._changing[adapter]

        with self._cond:
            if self._closed:
                raise EngineUnavailableError("the engine is shutting down", fix="retry on another replica")
            self._ops.append((change, future))
            self._changing[adapter] += 1
            future.add_done_callback(done)
            self._kick()
        return asyncio.wrap_future(future)

    def _fail_ops(self) -> None:
        """Queued model changes answered with an error (at shutdown: no step will run them; call with ``_cond``)."""
        ops, self._ops = self._ops, []
        for _, future in ops:
            if not future.done():
                future.set_exception(EngineUnavailableError("the engine shut down before this change ran",
                                                            fix="retry on another replica"))

    def _post(self, change: Callable[[], object]) -> None:
        """Run a change on the worker between two steps (no adapter is held back meanwhile)."""
        with self._cond:
            self._ops.append((change, concurrent.futures.Future()))
            self._kick()

    def _serve(self) -> None:
        """The worker loop: until nothing is queued or running."""
        import torch

        with torch.inference_mode(), TEAMS.working():  # an idle engine takes no share of the cores
            while True:
                with self._cond:
                    idle = not (self._pending or self._ops or self._filling or self._rows())
                    if idle or self._closed:
                        self._running = False
                        break
                try:
                    self._team = fit(self._team)  # another engine started or ran out of work: this one's share moved
                    self._run_ops()
                    self._admit()
                    self._tidy()
                    self._step()
                    self._tidy()
                except Exception as e:  # a failed step fails its requests, never the server
                    log.exception("step with %d rows failed", self.running())
                    self._fail_all(MixmergeError(f"generation failed: {type(e).__name__}: {e}",
                                                 fix="retry; the server's log has the traceback"))
        if self._closed:
            self._fail_all(None)
            with self._cond:
                self._fail_ops()

    def _tidy(self) -> None:
        """A folded copy that takes no new rows is dropped once its last row ends (after admission, so one that
        had none goes before the next step; after a step, so one whose last row just ended goes before idling)."""
        if self.placement:
            self.placement.tidy(self._filling)

    def _fail_all(self, error: BaseException | None) -> None:
        for job in [*self._rows(), *self._filling]:
            if error is None:
                job.abort()
            else:
                job.push(error)
        for batch, _, _ in self._lanes():
            batch.__init__()
        self._filling = []

    def _run_ops(self) -> None:
        with self._cond:
            ops, self._ops = self._ops, []
        later = []
        for change, future in ops:
            try:
                future.set_result(change())
            except _Later:
                later.append((change, future))
            except Exception as e:
                future.set_exception(e)
        if later:
            with self._cond:
                self._ops[:0] = later

    def _admit(self) -> None:
        """Waiting requests into free rows, oldest first; one whose adapter waits for a slot lets others pass."""
        with self._cond:
            waiting = list(self._pending)
        for job in [job for job in waiting if job.cancelled]:  # first: a full batch must not keep them queued
            self._take(job).abort()
        for job in waiting:
            if job.cancelled:
                continue  # cancelled since: taken at the next step
            if self.running() >= self.config.max_batch_size:
                return
            name = job.request.adapter
            try:
                if name and (name in self._changing or not self.slots.ready(name)):
                    continue
            except MixmergeError as e:
                self._take(job).push(e)
                continue
            self._take(job)
            self._filling.append(job)  # first: where placing it fails, the step's failure answers it
            job.lane = self.placement.place(job) if self.placement else None  # counted, and placed

    def _take(self, job: Job) -> Job:
        with self._cond:
            self._pending.remove(job)
        return job

    def _packable(self) -> bool:
        """Packed steps need this attention in every model and, with LoRA, the grouped forward."""
        return all(packable(model) and (lora is None or lora.grouped) for _, model, lora in self._lanes())

    def _step(self) -> None:
        """One step per model: its rows' next tokens and newcomers' prompt chunks (oldest first, up to
        ``prefill_budget`` tokens in all), packed in one forward where the model allows (else a forward per
        chunk and one of the rows); a newcomer whose prompt is in joins its batch."""
        budget, fills = self.prefill_budget, []
        for job in list(self._filling):
            if job.cancelled:
                self._filling.remove(job)
                job.abort()
            elif budget > 0:
                # a prompt is cut only at multiples of the budget from its own start, never where this step's
                # budget runs out: where a prompt is cut changes its bf16 logits (chunks of 50 + 125 tokens vs
                # whole: 47,840 of 49,152 differ), and who else arrived must not change a request's answer
                block_end = min((job.filled // self.prefill_budget + 1) * self.prefill_budget, len(job.prompt_ids))
                if block_end - job.filled > budget:
                    break  # oldest first: it takes its whole block at the next step
                fills.append((job, block_end - job.filled))
                budget -= fills[-1][1]
        step = packed_step if self._packable() else apart_step
        for batch, model, lora in self._lanes():
            mine = [(job, n) for job, n in fills if (job.lane.batch if job.lane else self.batch) is batch]
            if len(batch):
                self.batches.append(len(batch))
            if len(batch) or mine:
                for job in batch.packed(step, model, lora, mine, self.runner.tokenizer, self.eos, self._eos_list):
                    self._filling.remove(job)
