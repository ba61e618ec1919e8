"""CPU threads for the `hf` engine: each engine's forward thread is one OpenMP team, the cores split between the
engines that have work.

torch's thread count is per thread: each thread sets OpenMP's from torch's global count at its first parallel op,
and ``torch.set_num_threads`` sets the calling thread's and the global one. libgomp spins a waiting thread only
while the process has no more OpenMP threads than cores; with more (a second team of full size: the loading
thread's, an adapter reader's, another engine's forward thread) every barrier of every small op sleeps and wakes.
So the forward thread of each engine with work gets ``cores // engines with work`` threads (at least 1), set
between steps, and every other thread of the engine runs single-threaded. On this 2-core AMD EPYC,
Qwen2.5-Coder-0.5B bf16, 24 requests x 32 tokens at c=8 in process: the forward thread alone with 2 threads
134-137 out tok/s; with 1 (what the engine ran before: it set 1 in its loading thread, meant as "leave a core to
the server", and the forward thread inherited it) 95; 2 threads in every thread (``OMP_NUM_THREADS=2``) 77
(benchmarks/README.md, "One OpenMP team"). An idle engine counts for nothing: the split was by engines alive, so a
folded mix served beside its idle fallback base model decoded on one thread (45 of 404 bench items in 4.4 min,
against 89 for the same mix as a LoRA on the one engine, 2026-11-28).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["TEAMS", "cores", "fit", "one_thread"]


def cores() -> int:
    """The threads all of this process's engines may use: an explicit ``OMP_NUM_THREADS``, else every core the
    process may run on (its affinity, e.g. a container's share)."""
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    return max(1, len(os.sched_getaffinity(0)))


class Teams:
    """The hf engines alive in this process, and those with work now (``working``): each working engine's
    forward thread gets ``cores() // engines working`` threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines = 0
        self._working = 0

    def join(self) -> None:
        with self._lock:
            self._engines += 1

    def leave(self) -> None:
        with self._lock:
            self._engines = max(0, self._engines - 1)

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Around an engine's steps, from its first queued request until it has nothing left to run."""
        with self._lock:
            self._working += 1
        try:
            yield
        finally:
            with self._lock:
                self._working = max(0, self._working - 1)

    @property
    def engines(self) -> int:
        return self._engines

    def share(self) -> int:
        """The forward threads of an engine that works now (counted, or about to be: at least one)."""
        return max(1, cores() // max(1, self._working))


TEAMS = Teams()


def fit(current: int) -> int:
    """On an engine's forward thread, at its start and between steps: its share of the cores now (set when it
    changed: another engine started or ran out of work). Returns the thread's count."""
    import torch

    want = TEAMS.share()
    if want != current:
        torch.set_num_threads(want)
        return torch.get_num_threads()  # its first parallel op's setup done now: later global resets cannot reach it
    return current


def one_thread() -> None:
    """For every other thread that may run torch (the loading thread, prompt preparation, adapter reads): one
    OpenMP thread, no team of its own."""
    import torch

    torch.set_num_threads(1)
