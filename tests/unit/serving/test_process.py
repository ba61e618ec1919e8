"""The child-process launcher: its own session, health polling with the log's tail on failure, and a stop that
ends every process of the group (grandchildren included, and those that ignore SIGTERM)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.bench.launch import ServerProcess
from runtime.errors import EngineUnavailableError
from runtime.process import ChildProcess, group_members

# A parent that starts a grandchild (like vLLM's server and its engine core), says so, and waits.
FAMILY = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("ready", grandchild.pid, flush=True)
time.sleep(600)
"""
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


def _child(code: str, tmp_path: Path, env: dict[str, str] | None = None) -> ChildProcess:
    return ChildProcess([sys.executable, "-c", code], env if env is not None else dict(os.environ), "test",
                        tmp_path / "child.log")


def _ready(child: ChildProcess) -> bool:
    return "ready" in child.log_path.read_text()


def test_stop_ends_the_child_and_its_grandchildren(tmp_path: Path):
    child = _child(FAMILY, tmp_path)
    child.start()
    child.wait_healthy(lambda: _ready(child), timeout_s=60, interval_s=0.05)
    assert os.getpgid(child.pid) == child.pid != os.getpgid(0)  # its own group, not ours
    assert len(group_members(child.pid)) == 2
    child.stop(grace_s=10)
    assert group_members(child.pid) == [] and not child.alive()


def test_a_group_left_behind_by_a_killed_leader_is_still_stopped(tmp_path: Path):
    child = _child(FAMILY, tmp_path)
    child.start()
    child.wait_healthy(lambda: _ready(child), timeout_s=60, interval_s=0.05)
    grandchild = int(child.log_path.read_text().split()[1])
    child.process.kill()
    child.process.wait()
    assert group_members(child.pid) == [grandchild]  # the orphan lives on in the group
    child.stop(grace_s=10)
    assert group_members(child.pid) == []


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path):
    child = _child(STUBBORN, tmp_path)
    child.start()
    child.wait_healthy(lambda: _ready(child), timeout_s=60, interval_s=0.05)
    child.stop(grace_s=0.5)
    assert group_members(child.pid) == [] and child.process.returncode == -9


def test_a_child_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path):
    child = _child("print('no model at /nowhere'); raise SystemExit(3)", tmp_path)
    child.start()
    with pytest.raises(EngineUnavailableError, match=r"test exited with 3 while starting.*no model at /nowhere"):
        child.wait_healthy(lambda: False, timeout_s=60, interval_s=0.05)


def test_a_child_that_never_answers_is_stopped_when_time_runs_out(tmp_path: Path):
    child = _child(FAMILY, tmp_path)
    child.start()
    with pytest.raises(EngineUnavailableError, match="did not answer within 1 s"):
        child.wait_healthy(lambda: False, timeout_s=1, interval_s=0.05)
    assert group_members(child.pid) == []


def test_a_cancelled_start_stops_the_child(tmp_path: Path):
    child = _child(FAMILY, tmp_path)
    cancel = threading.Event()
    child.start()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(EngineUnavailableError, match="start was cancelled"):
        child.wait_healthy(lambda: False, timeout_s=60, interval_s=0.05, cancel=cancel)
    assert group_members(child.pid) == []


def test_the_child_gets_exactly_the_environment_it_is_given(tmp_path: Path):
    child = _child("import os; print(sorted(k for k in os.environ if k.startswith('MM_')))", tmp_path,
                   env={"MM_ONLY": "1", "PATH": os.environ["PATH"]})
    child.start()
    child.process.wait()
    assert child.log_path.read_text().strip() == "['MM_ONLY']"


def test_restarts_append_to_the_same_log(tmp_path: Path):
    for word in ("first", "second"):
        child = _child(f"print('{word}')", tmp_path)
        child.start()
        child.process.wait()
    assert child.log_path.read_text().split() == ["first", "second"]


def test_server_process_reports_a_serve_that_exits_with_its_log(tmp_path: Path):
    server = ServerProcess(["--no-such-option"], startup_timeout_s=120)
    with pytest.raises(EngineUnavailableError, match="exited with 2 while starting.*no-such-option"):
        server.__enter__()
    assert server.process is not None and server.process.returncode == 2
    assert server.url == f"http://127.0.0.1:{server.port}/v1"



def _write_pid(path, send):
    send(("pid", os.getpid()))
    path.write_text(str(os.getpid()))


def _refuse(send):
    from runtime.errors import BadRequestError

    raise BadRequestError("no such base model", fix="pull it first", param="base_model")


def _invalid(send):
    from runtime.errors import ConfigError

    raise ConfigError("train.yaml", ["lr: must be positive"])


def _die(send):
    os.kill(os.getpid(), 9)


def test_in_child_runs_apart_relays_messages_and_brings_its_error_back_whole(tmp_path):
    from runtime.errors import BadRequestError, ConfigError
    from runtime.process import in_child

    marker, heard = tmp_path / "pid", []
    in_child(_write_pid, marker, on_message=heard.append)
    assert int(marker.read_text()) != os.getpid() and heard == [("pid", int(marker.read_text()))]
    with pytest.raises(BadRequestError) as raised:
        in_child(_refuse)
    assert (raised.value.message, raised.value.fix, raised.value.param) == \
        ("no such base model", "pull it first", "base_model")
    with pytest.raises(ConfigError) as raised:
        in_child(_invalid)
    assert raised.value.problems == ["lr: must be positive"] and "train.yaml" in str(raised.value)


def test_in_child_says_when_the_child_dies_without_a_word():
    from runtime.process import ChildDiedError, in_child

    with pytest.raises(ChildDiedError, match="exit code -9"):
        in_child(_die)


class _Picky(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def _picky(send):
    raise _Picky(1, 2)  # pickles, but cannot be rebuilt from its args


def _exits(send):
    sys.exit(0)


def _wait_for_interrupt(marker, send):
    try:
        send("started")
        time.sleep(60)
    finally:
        marker.write_text("unwound")  # what an interrupted build does: clean up


def test_in_child_reports_errors_that_do_not_rebuild_and_a_quiet_exit():
    from runtime.process import in_child

    with pytest.raises(RuntimeError, match=r"_Picky: 1/2"):
        in_child(_picky)
    with pytest.raises(RuntimeError, match=r"exit\(0\)"):
        in_child(_exits)


def test_an_interrupt_here_lets_the_child_unwind_then_raises(tmp_path):
    import _thread

    from runtime.process import in_child

    marker = tmp_path / "marker"
    # Python's own Ctrl-C handler, also where this runs with SIGINT ignored (nohup): interrupt_main then does nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            in_child(_wait_for_interrupt, marker,
                     on_message=lambda _: threading.Timer(0.2, _thread.interrupt_main).start())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert marker.read_text() == "unwound"
