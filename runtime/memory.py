"""Memory of a process: the peak RSS of a process tree sampled in a background thread (the bench's servers), and
the peak RSS of one build inside this process (``BuildPeak``, for artifact manifests).

A process's own peak (``VmHWM``, ``ru_maxrss``) only grows, so in a process that builds several artifacts the
second would record the first's peak. On Linux writing ``5`` to ``/proc/self/clear_refs`` resets it to the current
RSS; ``BuildPeak`` does that when a build starts, and folds the peak so far into every build still running first,
so nested builds (a sweep's candidate merges) each get their own peak and the outer one keeps the largest.
Children the build started are sampled with the tree, every 0.2 s; processes already running when it started
(a server a test or a bench holds open) are not the build's and are left out.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import psutil

log = logging.getLogger(__name__)
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


class TreeRSSSampler:
    """The RSS of process ``pid`` and its descendants, but not of the processes in ``exclude``."""

    def __init__(self, pid: int, interval_s: float = 0.2, exclude: frozenset[int] = frozenset()) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.exclude = exclude
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_now(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *(c for c in root.children(recursive=True) if c.pid not in self.exclude)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, self.rss_now())

    def __enter__(self) -> TreeRSSSampler:
        self.peak_bytes = self.rss_now()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.rss_now())

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / (1 << 20)


def own_peak_bytes() -> int | None:
    """This process's peak RSS since it started or since the last ``reset_own_peak`` (VmHWM), None off Linux."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_own_peak() -> bool:
    """Set this process's peak RSS to its current RSS; False where the kernel does not allow it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class BuildPeak:
    """The peak RSS of this process and its children from ``__enter__`` to now (``mb``)."""

    _active: list[BuildPeak] = []  # builds running in this process, outermost first
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._folded = 0  # peaks this build saw before a nested build reset the process's, and nested builds' own
        self._exact = False
        self._tree = TreeRSSSampler(os.getpid())

    def __enter__(self) -> BuildPeak:
        with BuildPeak._lock:
            now = own_peak_bytes() or 0
            for outer in BuildPeak._active:
                outer._folded = max(outer._folded, now)
            self._exact = reset_own_peak()
            if not self._exact:
                log.debug("cannot reset the peak RSS here: a build's peak is sampled every 0.2 s")
            BuildPeak._active.append(self)
        self._tree.exclude = frozenset(c.pid for c in psutil.Process().children(recursive=True))
        self._tree.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._tree.__exit__(*exc)
        with BuildPeak._lock:
            self._folded = self._peak_now()
            BuildPeak._active.remove(self)
            for outer in BuildPeak._active:
                outer._folded = max(outer._folded, self._folded)

    def _peak_now(self) -> int:
        own = (own_peak_bytes() or 0) if self._exact else 0
        return max(self._folded, own, self._tree.peak_bytes, self._tree.rss_now())

    @property
    def mb(self) -> float:
        return round((self._peak_now() if self in BuildPeak._active else self._folded) / (1 << 20), 1)

