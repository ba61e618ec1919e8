"""Run generated code safely: one process per sample, limits, no network, nothing left behind.

Where the machine allows it (root with namespaces, as in CI here) each sample runs under ``unshare`` in fresh
PID, network, mount and IPC namespaces, as ``nobody``, with private tmpfs over /tmp, /var/tmp and /dev/shm; the
kernel kills everything the sample started when it ends. Elsewhere it runs as the current user in its own
session with sockets blocked. Both modes apply rlimits (address space, CPU seconds, file size, process count)
and a wall-clock timeout, and capture output. ``Sandbox.isolation`` says which mode ran, for reports.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("sandbox_child.py")
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--ipc", "--uts"]
Status = Literal["passed", "failed", "timeout"]


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock per sample; HumanEval's tests take well under a second
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 1024  # address space (RLIMIT_AS); a 10 GB allocation fails with MemoryError
    file_mb: int = 16  # largest file the sample may write (RLIMIT_FSIZE)
    max_procs: int = 32  # processes of the sandbox user (RLIMIT_NPROC): stops fork bombs
    max_output: int = 16_384  # characters of stdout/stderr kept


@dataclass(frozen=True)
class RunResult:
    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """True where ``unshare`` can make the namespaces (root, or a kernel that lets users do it)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        proc = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


class Sandbox:
    def __init__(self, limits: SandboxLimits | None = None, workers: int | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.workers = workers or os.cpu_count() or 1
        self.namespaces = namespaces_available()

    @property
    def isolation(self) -> dict[str, object]:
        return {
            "mode": "namespaces" if self.namespaces else "process",
            "network": "namespace (no interfaces)" if self.namespaces else "blocked sockets",
            "user": "nobody" if self.namespaces else "current user",
            "filesystem": "private /tmp, home hidden" if self.namespaces else "temporary working directory",
            "limits": asdict(self.limits),
            "workers": self.workers,
        }

    def run(self, program: str) -> RunResult:
        with tempfile.TemporaryDirectory(prefix="mixmerge-sandbox-") as scratch:
            settings = {"namespaces": self.namespaces, "drop_to_nobody": self.namespaces,
                        "prefix": sys.base_prefix, "workdir": str(Path(scratch) / "work"),
                        "memory_mb": self.limits.memory_mb, "cpu_s": self.limits.cpu_s,
                        "file_mb": self.limits.file_mb, "max_procs": self.limits.max_procs}
            os.mkdir(settings["workdir"])
            cmd = [sys.executable, "-I", str(CHILD), json.dumps(settings)]
            if self.namespaces:
                cmd = [*UNSHARE, *cmd]
            out_path, err_path = Path(scratch) / "stdout", Path(scratch) / "stderr"
            with out_path.open("w+b") as out, err_path.open("w+b") as err:
                return self._wait(cmd, program, out, err)

    def _wait(self, cmd: list[str], program: str, out, err) -> RunResult:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True)
        status: Status
        try:
            proc.stdin.write(program.encode())  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        try:
            code: int | None = proc.wait(timeout=self.limits.timeout_s)
            status = "passed" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            code, status = None, "timeout"
        self._kill_group(proc)
        duration = time.monotonic() - start
        return RunResult(status, code, self._read(out), self._read(err), round(duration, 3))

    @staticmethod
    def _kill_group(proc: subprocess.Popen, patience_s: float = 10.0) -> None:
        """Kill whatever is left of the sample's process group and wait until it is empty, so that nothing a
        sample started (a fork bomb's children, a background job) outlives its run."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            if proc.poll() is None:
                proc.wait()
            if time.monotonic() > deadline:
                log.warning("sandbox process group %d did not empty within %.0f s", proc.pid, patience_s)
                break
            time.sleep(0.02)
        proc.wait()

    def _read(self, f) -> str:
        f.seek(0)
        return f.read(self.limits.max_output).decode(errors="replace")

    def run_many(self, programs: list[str]) -> list[RunResult]:
        """Run samples in parallel, one per core by default; results in input order."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self.run, programs))
