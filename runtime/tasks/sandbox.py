"""Run generated code safely: one process per sample, limits, no network, no secrets, nothing left behind.

Where the machine allows it (root with namespaces, as in CI here) each sample runs under ``unshare`` in fresh
PID, network, mount, IPC and UTS namespaces, as ``nobody``, in a minimal read-only root (system folders and the
interpreter; not the checkout, the home or the model store), with its own /proc that shows no other process, and
one private tmpfs of ``tmpfs_mb`` for every writable place; the kernel kills everything the sample started when it
ends. The process is exec'd with a minimal environment, so no secret of the parent's is in its memory.

Without namespaces the sample runs as the current user in its own session with Python's sockets blocked: it can
read whatever that user can, see other processes' command lines and reach the network through raw sockets.
As root that is refused unless the user opts in (``--unsafe-sandbox``, ``MIXMERGE_UNSAFE_SANDBOX=1`` or
``Sandbox(allow_unsafe=True)``), and ``Sandbox.isolation`` (which eval.json and the bench report carry) says so.

Both modes apply rlimits (address space, CPU seconds, file size, process count), a seccomp filter that refuses
memfd_create and SysV shared memory (memory that RLIMIT_AS does not count), and a wall-clock timeout. A sample
passes only if it exits 0 *and* writes the run's secret marker, which the harness does after the program's last
line: ``os._exit(0)`` or ``sys.exit()`` halfway is a failure, and so is printing a guessed marker. (Code written to
dig the marker out of its own memory could still forge a pass; the walls above do not depend on the marker.)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Literal

from runtime.errors import MixmergeError

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("sandbox_child.py")
CHECKOUT = Path(__file__).resolve().parents[2]
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--ipc", "--uts"]
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # all the child is exec'd with
SECCOMP_MACHINES = ("x86_64", "aarch64")  # where sandbox_child knows the syscall numbers
UNSAFE_ENV = "MIXMERGE_UNSAFE_SANDBOX"
Status = Literal["passed", "failed", "timeout"]


class SandboxRefusedError(MixmergeError):
    error_type = "sandbox_refused"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock per sample; HumanEval's tests take well under a second
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 1024  # address space (RLIMIT_AS); a 10 GB allocation fails with MemoryError
    file_mb: int = 16  # largest file the sample may write (RLIMIT_FSIZE)
    tmpfs_mb: int = 64  # all of /tmp, /var/tmp, /dev/shm and /run/lock together (namespaces mode)
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


def hidden_paths() -> list[str]:
    """Folders a sample must not read even where they sit under an exposed system folder."""
    home = Path.home()
    store = Path(os.environ.get("MIXMERGE_HOME", home / ".cache" / "mixmerge")).expanduser()  # as runtime.models
    return sorted({str(p.resolve()) for p in (CHECKOUT, home, store, Path.cwd())})


def execute(program: str, limits: SandboxLimits, namespaces: bool) -> RunResult:
    """Run ``program`` once in a fresh sandbox."""
    marker = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="mixmerge-sandbox-") as scratch:
        settings = {"namespaces": namespaces, "seccomp": os.uname().machine in SECCOMP_MACHINES,
                    "prefix": sys.base_prefix, "interpreter": os.path.realpath(sys.executable),
                    "hide": hidden_paths(), "workdir": str(Path(scratch) / "work"), "tmpfs_mb": limits.tmpfs_mb,
                    "memory_mb": limits.memory_mb, "cpu_s": limits.cpu_s, "file_mb": limits.file_mb,
                    "max_procs": limits.max_procs, "marker": marker}
        os.mkdir(settings["workdir"])
        cmd = [sys.executable, "-I", str(CHILD)]
        if namespaces:
            cmd = [*UNSHARE, *cmd]
        marker_path = Path(scratch) / "marker"
        marker_fd = os.open(marker_path, os.O_WRONLY | os.O_CREAT, 0o600)
        settings["marker_fd"] = marker_fd
        stdin = json.dumps(settings) + "\n" + program
        try:
            with (Path(scratch) / "stdout").open("w+b") as out, (Path(scratch) / "stderr").open("w+b") as err:
                status, code, duration = _wait(cmd, stdin, marker_fd, out, err, limits.timeout_s)
                stdout, stderr = _read(out, limits.max_output), _read(err, limits.max_output)
        finally:
            os.close(marker_fd)
        if status == "passed" and marker_path.read_text() != marker:
            status = "failed"
            stderr += "\nsandbox: the program exited with status 0 before its last line ran (no pass)\n"
    return RunResult(status, code, stdout, stderr, round(duration, 3))


def _wait(cmd: list[str], stdin: str, marker_fd: int, out: IO[bytes], err: IO[bytes],
          timeout_s: float) -> tuple[Status, int | None, float]:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, env=CHILD_ENV,
                            pass_fds=(marker_fd,), start_new_session=True)
    status: Status
    try:
        proc.stdin.write(stdin.encode())  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    except BrokenPipeError:
        pass
    try:
        code: int | None = proc.wait(timeout=timeout_s)
        status = "passed" if code == 0 else "failed"
    except subprocess.TimeoutExpired:
        code, status = None, "timeout"
    _kill_group(proc)
    return status, code, time.monotonic() - start


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


def _read(f: IO[bytes], max_output: int) -> str:
    f.seek(0)
    return f.read(max_output).decode(errors="replace")


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """True where the isolated mode works here: ``unshare`` can make the namespaces (root with CAP_SYS_ADMIN) and
    a trivial program runs to its end inside the minimal root."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        probe = execute("import math\nassert math.sqrt(4) == 2", SandboxLimits(timeout_s=30), namespaces=True)
    except OSError as e:
        log.warning("sandbox: namespaces unavailable (%s)", e)
        return False
    if not probe.passed:
        log.warning("sandbox: namespaces unavailable: %s", probe.stderr.strip()[-500:] or probe.status)
    return probe.passed


def _opted_in(allow_unsafe: bool | None) -> bool:
    if allow_unsafe is not None:
        return allow_unsafe
    return os.environ.get(UNSAFE_ENV, "").lower() in ("1", "true", "yes")


class Sandbox:
    """Runs samples; refuses to run them as root without namespaces unless ``allow_unsafe`` (default: the
    ``MIXMERGE_UNSAFE_SANDBOX`` environment variable)."""

    def __init__(self, limits: SandboxLimits | None = None, workers: int | None = None,
                 allow_unsafe: bool | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.workers = workers or os.cpu_count() or 1
        self.namespaces = namespaces_available()
        if not self.namespaces:
            if os.geteuid() == 0 and not _opted_in(allow_unsafe):
                raise SandboxRefusedError(
                    "refusing to run model code as root without namespaces: it could read every file, secret and "
                    "process on this machine",
                    fix="run where `unshare --pid --mount --net` works (root with CAP_SYS_ADMIN, e.g. a privileged "
                        f"container), or accept the risk with --unsafe-sandbox ({UNSAFE_ENV}=1)")
        self._warned = self.namespaces

    def _warning(self) -> str:
        user = pwd.getpwuid(os.geteuid()).pw_name
        return (f"UNSAFE: no namespaces here; model code runs as {user!r} and can read every file and process "
                "command line that user can, write anywhere that user can, reach the network through raw sockets "
                "and leave processes behind (setsid)")

    @property
    def isolation(self) -> dict[str, object]:
        seccomp = os.uname().machine in SECCOMP_MACHINES
        common = {
            "environment": "minimal, set when the process is exec'd (PATH, LANG; HOME and TMPDIR the work dir)",
            "shared_memory": "memfd_create and SysV shmget refused (seccomp)" if seccomp
            else f"not restricted (no seccomp filter for {os.uname().machine})",
            "pass_criterion": "exit status 0 and the run's secret marker, written after the program's last line",
            "limits": asdict(self.limits),
            "workers": self.workers,
        }
        if not self.namespaces:
            return {"mode": "process", "safe": False, "warning": self._warning(),
                    "network": "Python sockets blocked (raw sockets are not)",
                    "user": pwd.getpwuid(os.geteuid()).pw_name, "processes": "visible, with their command lines",
                    "filesystem": "everything the user can read; a temporary working directory"} | common
        return {"mode": "namespaces", "safe": True, "network": "own namespace (no interfaces)", "user": "nobody",
                "processes": "own PID namespace; its /proc (hidepid=2) shows only the sample's own processes",
                "filesystem": "minimal read-only root (/usr, /etc, /lib*, the interpreter); checkout, home and "
                              "model store absent",
                "writable": f"/tmp, /var/tmp, /dev/shm and /run/lock in one private {self.limits.tmpfs_mb} MB tmpfs"
                } | common

    def run(self, program: str) -> RunResult:
        if not self._warned:
            log.warning("sandbox: %s", self._warning())
            self._warned = True
        return execute(program, self.limits, self.namespaces)

    def run_many(self, programs: list[str]) -> list[RunResult]:
        """Run samples in parallel, one per core by default; results in input order."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self.run, programs))
