"""Child processes that we start and own: a server in its own session, its output in a log file, polled until it
answers, and stopped with its whole process group.

Used for vLLM's OpenAI server (whose engine core and workers are further processes of the same group: stopping the
server alone left them running, 3.4 GB) and for ``runtime serve`` under the bench. Linux only: group members are
read from /proc.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from runtime.errors import EngineUnavailableError, MixmergeError

log = logging.getLogger(__name__)
Probe = Callable[[], bool]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildDiedError(MixmergeError):
    """A child process (``in_child``) ended without saying how: killed, or out of memory."""


def in_child(target: Callable[..., None], *args, on_message: Callable[[object], None] = lambda _: None,
             grace_s: float = 10.0) -> None:
    """Run ``target(*args, send)`` in a fresh Python process and wait for it: the memory it takes goes back to the
    system when it ends (a training run peaks at 12-15 GB on the 0.5B, and a bench that built its zoo in-process
    kept 17.6 GB of heap beside the servers it then started). ``send(message)`` hands a picklable message to
    ``on_message`` here (progress). The child starts set up as this process is (root log level and format,
    transformers' bars off where they are off here). Its error is raised here, whole where it pickles
    (``MixmergeError`` does), else as a RuntimeError naming it. An interrupt here interrupts the child and gives
    it ``grace_s`` to unwind (temporary folders, checkpoints) before it is terminated. Spawned, not forked: a fork
    of a process whose torch already ran OpenMP work hangs at the child's first parallel op (libgomp), so
    ``target`` and ``args`` must pickle (a module-level function and plain data)."""
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    child = context.Process(target=_child_main, args=(target, args, channel, _setup()), daemon=False)
    child.start()
    try:
        while True:
            try:
                kind, payload = channel.get(timeout=1.0)
            except queues.Empty:
                if child.is_alive():
                    continue
                try:  # it may have said its last word just before it ended
                    kind, payload = channel.get(timeout=1.0)
                except queues.Empty:
                    child.join()
                    raise ChildDiedError(f"the child process ended (exit code {child.exitcode}) before it finished",
                                         fix="see the log above; out of memory is the usual cause") from None
            if kind == "message":
                on_message(payload)
            elif kind == "error":
                raise payload
            else:
                break
    except BaseException:
        if child.is_alive():
            os.kill(child.pid, signal.SIGINT)
            child.join(grace_s)
        if child.is_alive():
            child.terminate()
        child.join()
        raise
    child.join(grace_s)
    if child.is_alive():  # its work is done; something it left behind keeps it from exiting
        child.terminate()
        child.join()


def _setup() -> dict:
    root = logging.getLogger()
    formats = [h.formatter._fmt for h in root.handlers if h.formatter is not None]
    setup = {"level": root.level, "format": formats[0] if formats else None, "bars": True}
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        setup["bars"] = hf_logging.is_progress_bar_enabled()
    return setup


def _child_main(target: Callable[..., None], args: tuple, channel, setup: dict) -> None:
    import pickle
    import traceback

    signal.signal(signal.SIGINT, signal.default_int_handler)  # the parent's interrupt unwinds it (even under nohup)
    logging.basicConfig(level=setup["level"], **({"format": setup["format"]} if setup["format"] else {}))
    if not setup["bars"]:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        target(*args, lambda message: channel.put(("message", message)))
        channel.put(("done", None))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, which decides
        if not isinstance(e, MixmergeError | KeyboardInterrupt):
            traceback.print_exc()  # a bug: its trace stays in the log (the parent raises a copy without it)
        if isinstance(e, SystemExit):  # the parent must not exit quietly because its child did
            e = RuntimeError(f"the child process called exit({e.code})")
        try:
            pickle.loads(pickle.dumps(e))  # both ways: an error that pickles may still not rebuild
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e}")
        channel.put(("error", e))


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def http_probe(url: str, uds: str | None = None, timeout_s: float = 2.0) -> Probe:
    """A probe that is True when GET ``url`` answers 200 (over the unix socket ``uds`` if given)."""

    def probe() -> bool:
        transport = httpx.HTTPTransport(uds=uds) if uds else None
        try:
            with httpx.Client(transport=transport, timeout=timeout_s) as client:
                return client.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


class ChildProcess:
    """One server process in its own session (so its process group is all of its descendants).

    ``env`` is the child's whole environment, given explicitly; secrets go there, never into ``cmd``, which every
    user of the machine can read in /proc/PID/cmdline. Output goes to ``log_path`` (a private temp file by
    default), appended across restarts.
    """

    def __init__(self, cmd: list[str], env: dict[str, str], name: str, log_path: Path | None = None) -> None:
        self.cmd = cmd
        self.env = env
        self.name = name
        if log_path is None:
            fd, path = tempfile.mkstemp(prefix=f"mixmerge-{name}-", suffix=".log")  # mode 0600
            os.close(fd)
            log_path = Path(path)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    def start(self) -> None:
        with self.log_path.open("ab") as out:  # the child keeps its own descriptor
            self.started_at = time.perf_counter()
            self.process = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.info("started %s (pid %d, log %s): %s", self.name, self.process.pid, self.log_path, " ".join(self.cmd))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_healthy(self, probe: Probe, timeout_s: float, interval_s: float = 0.5,
                     cancel: threading.Event | None = None) -> float:
        """Poll ``probe`` until it passes; return the seconds since start. If the child exits, the time runs out or
        ``cancel`` is set, the group is stopped and EngineUnavailableError says why, with the log's last lines."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (cancel and cancel.is_set()):
            if not self.alive():
                code = self.process.returncode if self.process else None
                self.stop()
                raise EngineUnavailableError(f"{self.name} exited with {code} while starting; last lines: "
                                             f"{self.tail()}", fix=f"see {self.log_path} for the cause")
            if probe():
                return time.perf_counter() - self.started_at
            time.sleep(interval_s)
        self.stop()
        why = "start was cancelled" if cancel and cancel.is_set() else f"did not answer within {timeout_s:.0f} s"
        raise EngineUnavailableError(f"{self.name} {why}; last lines: {self.tail()}",
                                     fix=f"see {self.log_path}; a slow machine needs a longer startup timeout")

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the whole group, wait up to ``grace_s`` for every member, then SIGKILL what is left."""
        if self.process is None:
            return
        pgid = self.process.pid  # the session leader's pid; the group outlives the leader while members remain
        if _signal_group(pgid, signal.SIGTERM) and not self._wait_group_gone(pgid, grace_s):
            log.warning("%s: group %d still running after %.0f s; killing it", self.name, pgid, grace_s)
            _signal_group(pgid, signal.SIGKILL)
            if not self._wait_group_gone(pgid, 10.0):
                log.error("%s: processes %s of group %d survived SIGKILL", self.name, group_members(pgid), pgid)
        self.process.poll()

    def _wait_group_gone(self, pgid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            self.process.poll()  # reap the leader, or it stays a zombie member
            if not group_members(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
