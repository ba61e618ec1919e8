"""Traffic-aware adapter placement for the `hf` engine (``engine.adaptive``; the idea of dLoRA, OSDI '24).

The engine watches which adapter each admitted request names over a sliding window of recent requests. When one
adapter has at least ``fold_share`` of the window and a copy of the weights fits ``memory_mb``, a worker thread
builds a copy of the model with that adapter folded in (base weights + B A scaling, PEFT ``merge_and_unload``: the
math of ``merge.run.fold_lora``, in memory instead of on disk). Once built, the swap is posted between two steps:
requests for that adapter admitted from then on run on the folded copy (no LoRA math per token); rows already
running keep the model they started on until they finish. When its share falls below ``unfold_share`` (the gap
between the two thresholds stops placement from flapping), new requests go back to LoRA and the copy is dropped
once its last row ends. At most one copy exists at a time, so memory never exceeds one copy of the weights.

Why a second model and not the dominant delta merged into the served weights in place (serving the other
adapters with a ``-delta`` correction): in bf16, ``(W + D) - D`` is not ``W``, so every other adapter's and the
base model's answers would drift; PEFT mixes adapters by row with one adapter name per row, so a row cannot run
"minus the dominant, plus its own" without a combined adapter per pair; and rows in flight would see the weights
change under them. A copy costs memory but keeps every row's answer exactly as it would be without it.

The scheduler (``scheduler.py``) steps each model's rows in its own :class:`~runtime.engines.scheduler.Batch`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from runtime.config import AdaptiveConfig
from runtime.engines.prepacked import prepacked_bytes
from runtime.engines.scheduler import BASE, Batch, Job
from runtime.engines.threads import one_thread

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Lane:
    """A folded copy of the model for one adapter, and the rows it decodes."""

    adapter: str
    model: object
    batch: Batch = field(default_factory=Batch)
    accepting: bool = True  # False once unfolded: it only finishes its rows
    rows: int = 0  # requests placed on it


def weight_bytes(model) -> int:
    """What a copy of the model's weights takes (LoRA layers left out; tied weights counted once; packed
    linears by their packed weights)."""
    return prepacked_bytes(model) + sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                                     if "lora_" not in name)


def fold_copy(model_path, dtype: str, peft_config, weights: dict, name: str):
    """A fresh copy of the base model with one LoRA adapter merged in: merged in float32 (the adapter's weights
    are float32) and cast to the serving dtype once, as a folded model saved in fp32 and loaded in bf16 would be."""
    import torch
    from peft import PeftModel, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    wrapped = PeftModel(base, copy.deepcopy(peft_config), adapter_name=name)
    result = set_peft_model_state_dict(wrapped, weights, adapter_name=name)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing:
        raise ValueError(f"{len(missing)} LoRA weights missing, e.g. {missing[0]}")
    return wrapped.merge_and_unload().to(getattr(torch, dtype)).eval()


class Placement:
    """Which adapter, if any, is served from a folded copy. Every method but :meth:`status` runs on the engine's
    worker thread (between steps); the copy is built on the placement's own thread."""

    def __init__(self, settings: AdaptiveConfig, copy_bytes: int, build: Callable[[str], object],
                 post: Callable[[Callable[[], None]], None]) -> None:
        self.settings = settings
        self.copy_bytes = copy_bytes
        self._build = build  # adapter name -> the folded model (on the fold thread)
        self._post = post  # run a callable on the worker between two steps
        self.recent: deque[str] = deque(maxlen=settings.window)
        self.lane: Lane | None = None  # the folded copy, serving or draining
        self._folding: tuple[str, Future] | None = None
        self._refused: set[str] = set()  # adapters whose fold failed or does not fit (until traffic changes)
        self.folds = self.unfolds = 0
        self.fold_ms: float | None = None
        self.note = ""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine-fold",
                                        initializer=one_thread)  # no OpenMP team beside the forward's (threads.py)

    # ------------------------------------------------------------------------------------------- requests
    def place(self, job: Job) -> Lane | None:
        """Count an admitted request and say where it runs: the folded copy of its adapter, or None (LoRA)."""
        self.recent.append(job.adapter)
        self._decide()
        lane = self.lane
        if lane is not None and lane.accepting and lane.adapter == job.adapter:
            lane.rows += 1
            return lane
        return None

    def lanes(self) -> list[Lane]:
        return [self.lane] if self.lane is not None else []

    def tidy(self, filling: list[Job]) -> None:
        """Drop an unfolded copy once no row runs or waits on it."""
        lane = self.lane
        if lane and not lane.accepting and not len(lane.batch) and not any(j.lane is lane for j in filling):
            self.lane = None
            log.info("adaptive: the folded copy of %s is dropped (its last row finished)", lane.adapter)

    def forget(self, name: str) -> None:
        """An adapter unloaded or replaced: its copy (stale now) takes no new rows."""
        self._refused.discard(name)
        if self._folding and self._folding[0] == name:
            self._folding = None
        if self.lane and self.lane.adapter == name and self.lane.accepting:
            self.lane.accepting = False
            self.unfolds += 1

    # ------------------------------------------------------------------------------------------- decisions
    def _decide(self) -> None:
        s = self.settings
        if len(self.recent) < s.min_requests:
            return
        counts = Counter(self.recent)
        current = self._folding[0] if self._folding else self.lane.adapter if self.lane and self.lane.accepting \
            else None
        if current is not None:
            share = counts[current] / len(self.recent)
            if share < s.unfold_share:
                self._unfold(current, share)
            return
        if self.lane is not None:  # the previous copy still finishes its rows: one copy at a time
            return
        top, n = max(((a, n) for a, n in counts.items() if a != BASE), key=lambda item: item[1], default=(None, 0))
        share = n / len(self.recent)
        if top is None or share < s.fold_share:
            self._refused.clear()
            return
        if top not in self._refused:
            self._fold(top, share)

    def _fold(self, name: str, share: float) -> None:
        budget = self.settings.memory_mb * 2**20
        if self.copy_bytes > budget:
            self._refused.add(name)
            self.note = (f"{name} not folded: a copy takes {self.copy_bytes / 2**20:.0f} MB, over "
                         f"adaptive.memory_mb {self.settings.memory_mb:g}")
            log.info("adaptive: %s", self.note)
            return
        log.info("adaptive: folding %s (%.0f%% of the last %d requests) on a worker thread", name, 100 * share,
                 len(self.recent))
        start = time.perf_counter()
        future = self._pool.submit(self._build, name)
        self._folding = (name, future)
        future.add_done_callback(lambda f: self._post(lambda: self._install(name, f, start)))

    def _install(self, name: str, future: Future, start: float) -> None:
        if self._folding is None or self._folding[1] is not future:
            return  # unfolded (or the adapter changed) while it was built: the copy is discarded
        self._folding = None
        try:
            model = future.result()
        except Exception as e:
            self._refused.add(name)
            self.note = f"{name} not folded: {e}"
            log.warning("adaptive: folding %s failed (%s); it stays on LoRA", name, e)
            return
        self.lane = Lane(name, model)
        self.folds += 1
        self.fold_ms = (time.perf_counter() - start) * 1000
        self.note = ""
        log.info("adaptive: %s folded in %.0f ms; its new requests run on the folded copy", name, self.fold_ms)

    def _unfold(self, name: str, share: float) -> None:
        if self._folding:
            self._folding = None
            log.info("adaptive: fold of %s abandoned (its share fell to %.0f%%)", name, 100 * share)
            return
        assert self.lane is not None
        self.lane.accepting = False
        self.unfolds += 1
        log.info("adaptive: unfolding %s (%.0f%% of the last %d requests): new requests go to LoRA, the copy goes "
                 "when its %d running rows finish", name, 100 * share, len(self.recent), len(self.lane.batch))

    # ---------------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, object]:
        recent = list(self.recent)  # one atomic copy: the worker appends meanwhile
        lane, folding = self.lane, self._folding
        mode = "folding" if folding else "lora" if lane is None else "folded" if lane.accepting else "draining"
        adapter = folding[0] if folding else lane.adapter if lane else None
        counts = Counter(recent)
        return {"mode": mode, "adapter": adapter, "window": len(recent),
                "shares": {a: round(n / len(recent), 3) for a, n in counts.most_common()},
                "folded_rows": lane.rows if lane else 0, "folds": self.folds, "unfolds": self.unfolds,
                "fold_ms": None if self.fold_ms is None else round(self.fold_ms, 1),
                "copy_mb": round(self.copy_bytes / 2**20, 1), "memory_mb": self.settings.memory_mb,
                "note": self.note}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
