"""Peak RSS of a process and everything it started, sampled in a background thread."""

from __future__ import annotations

import resource
import threading

import psutil


def peak_rss_mb() -> float:
    """This process's own peak RSS so far (for artifact manifests)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class TreeRSSSampler:
    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_now(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
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
