"""The `hf` engine's adapter slots: which adapters it knows, which are resident in the model, and how one gets in.

At most ``max_loras`` adapters are resident (injected into the model and stacked for the grouped forward,
``lora.py``); the least recently used unpinned one that no running row uses is evicted to make room. Reading an
adapter (``read``: checked, its weights and, for a runtime load, its layers built on meta from the base config)
holds nothing; ``install`` (the injection and the stacks' copy) and ``drop`` (and ``make_room`` and ``ready``, which
call them) change the served model, so the engine runs them on its worker between two steps. *When* a change may run
(no row of that adapter in flight) is the engine's business: it gives ``busy``, the adapters its rows use now,
which eviction never picks.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from runtime.engines.adaptive import fold_copy
from runtime.engines.attention import use_decode_attention
from runtime.engines.hf import HFRunner, check_adapter, install_adapter, read_adapter
from runtime.engines.lora import GroupedLora
from runtime.engines.prepacked import dense_weights_needed, prepack
from runtime.errors import BadRequestError, ModelNotFoundError, QueueFullError

log = logging.getLogger(__name__)


def needs_dense(path: Path) -> str | None:
    """Why an adapter known at start needs the dense base weights (``dense_weights_needed``), or None; an
    adapter that cannot be read is refused where it is loaded, as before."""
    try:
        return dense_weights_needed(check_adapter(path))
    except BadRequestError:
        return None


class AdapterSlots:
    """The adapters one model serves: ``known`` by name and path, ``resident`` in the model (LRU order)."""

    def __init__(self, runner: HFRunner, known: dict[str, str], max_loras: int, pinned: list[str],
                 busy: Callable[[], set[str]]) -> None:
        self.runner = runner
        self.busy = busy  # the adapters running rows use (asked only when a slot must be freed)
        self.known = known
        self.max_loras = max_loras
        self.pinned = set(pinned)
        self.resident: OrderedDict[str, None] = OrderedDict()
        self.lora = GroupedLora(max_loras)  # the served model's adapters, stacked for the grouped forward
        self.load_ms: dict[str, float] = {}  # a load, end to end (the engine times it)
        self.lock_ms: dict[str, float] = {}  # of which the model was held (between two steps)
        # before any adapter wraps the model; a copy: building an adapter's skeleton from it (loader thread) writes
        # dtype and attention onto the config it is given, and the served model's must not change under it
        self._base_config = copy.deepcopy(runner.model.config)

    def read(self, path: Path, prebuild: bool = False) -> tuple[object, dict, list | None]:
        """An adapter checked and read, off the served model; ``prebuild`` also builds its layers."""
        return read_adapter(path, self._base_config if prebuild else None)

    def install(self, name: str, config: object, weights: dict, layers: list | None = None) -> float:
        """Add one read adapter to the model (``install_adapter``) and stack it for the grouped forward."""
        start = time.perf_counter()
        try:
            self.runner.model = install_adapter(self.runner.model, name, config, weights, layers)
        finally:  # a failed load leaves the model as it was: its stacks are re-read either way
            self.lora.sync(self.runner.model)
        self.resident[name] = None
        ms = (time.perf_counter() - start) * 1000
        self.lock_ms[name] = ms
        log.info("added adapter %s to the model in %.1f ms", name, ms)
        return ms

    def drop(self, name: str) -> None:
        self.runner.model.delete_adapter(name)
        self.lora.sync(self.runner.model)
        del self.resident[name]

    def make_room(self, name: str) -> bool:
        """Evict unpinned adapters no row uses, least recently used first, until ``name`` fits; False while the
        slots are held by running rows (wait), an error when pinned adapters fill them."""
        busy = self.busy()
        while len(self.resident) >= self.max_loras:
            victim = next((n for n in self.resident if n not in self.pinned and n not in busy and n != name), None)
            if victim is None:
                if any(n not in self.pinned for n in self.resident):
                    return False
                raise QueueFullError("no adapter slot is free: pinned adapters fill them", fix="raise engine.max_loras")
            self.drop(victim)
        return True

    def ready(self, name: str) -> bool:
        """Make a request's adapter resident (read here: it was evicted); False while it must wait for a slot."""
        if name in self.resident:
            self.resident.move_to_end(name)
            return True
        if name not in self.known:
            raise ModelNotFoundError(f"adapter '{name}' was unloaded", fix="load it again", param="model")
        if not self.make_room(name):
            return False
        self.install(name, *self.read(Path(self.known[name]), prebuild=True))  # held: the transplant only
        return True

    def served(self) -> GroupedLora | None:
        """The grouped forward's stacks, once an adapter has wrapped the model."""
        return self.lora if hasattr(self.runner.model, "peft_config") else None

    def fold(self, name: str) -> object:
        """A copy of the model with one known adapter folded in (on the placement's thread: nothing served is
        touched)."""
        config, weights, _ = self.read(Path(self.known[name]))
        folded = fold_copy(self.runner.model_path, self.runner.dtype, config, weights, name).to(self.runner.device)
        return use_decode_attention(prepack(folded) if self.runner.pack else folded)
