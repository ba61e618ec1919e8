"""The red-team set: each attack is contained, scored as a failure, and the harness carries on."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from runtime.tasks import load_items
from runtime.tasks.sandbox import Sandbox, SandboxLimits, namespaces_available
from runtime.tasks.scoring import score_humaneval

FAST = SandboxLimits(timeout_s=3, cpu_s=3)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(FAST)


def _nobody_processes() -> int:
    out = subprocess.run(["ps", "-u", "65534", "-o", "pid="], capture_output=True, text=True).stdout
    return len(out.split())


def test_ordinary_code_runs_and_its_output_is_captured(sandbox: Sandbox):
    result = sandbox.run("import json, math\nprint(json.dumps(math.factorial(5)))")
    assert result.passed and result.stdout == "120\n" and result.returncode == 0


def test_a_failing_assertion_is_a_failure_with_its_traceback(sandbox: Sandbox):
    result = sandbox.run("assert 1 == 2, 'mismatch'")
    assert result.status == "failed" and "AssertionError: mismatch" in result.stderr


def test_infinite_loop_is_stopped(sandbox: Sandbox):
    result = sandbox.run("while True:\n    pass")
    assert result.status in ("timeout", "failed") and not result.passed
    assert result.duration_s < FAST.timeout_s + 3


def test_fork_bomb_is_contained_and_leaves_no_process(sandbox: Sandbox):
    before = _nobody_processes()
    result = sandbox.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert not result.passed
    assert _nobody_processes() <= before
    assert sandbox.run("print('still fine')").stdout == "still fine\n"


def test_ten_gigabyte_allocation_fails_inside(sandbox: Sandbox):
    result = sandbox.run("x = bytearray(10 * 1024 ** 3)\nprint('allocated')")
    assert result.status == "failed" and "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_deleting_home_touches_nothing_outside(sandbox: Sandbox, tmp_path: Path):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    home = Path.home() / f".mixmerge-canary-{uuid.uuid4().hex}"
    home.write_text("alive")
    try:
        code = (f"import os, shutil\nos.system('rm -rf ~ {tmp_path} {home} 2>/dev/null')\n"
                f"shutil.rmtree({str(tmp_path)!r}, ignore_errors=True)\n"
                f"os.remove({str(home)!r})")
        result = sandbox.run(code)
        assert not result.passed
        assert canary.read_text() == "alive" and home.read_text() == "alive"
    finally:
        home.unlink()


def test_writing_outside_the_work_dir_leaves_no_trace(sandbox: Sandbox):
    name = f"mixmerge-escape-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}", str(Path.cwd() / name)]
    code = (f"import pathlib\nfor t in {targets!r}:\n    try:\n        pathlib.Path(t).write_text('x')\n"
            "    except OSError:\n        pass\nopen('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())")
    result = sandbox.run(code)
    assert result.passed and result.stdout == "ok\n"  # the work dir itself is writable
    assert not any(os.path.exists(t) for t in targets)


def test_socket_to_localhost_is_refused(sandbox: Sandbox):
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        result = sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    finally:
        server.close()
    assert result.status == "failed"
    assert "Network is unreachable" in result.stderr or "blocked" in result.stderr


def test_isolation_is_reported():
    iso = Sandbox().isolation
    assert iso["mode"] == ("namespaces" if namespaces_available() else "process")
    assert iso["workers"] >= 1


def test_canonical_humaneval_solutions_all_pass_and_empty_answers_all_fail():
    items = load_items("humaneval", "test")
    assert len(items) == 164
    sandbox = Sandbox()
    assert score_humaneval(items, [it.reference for it in items], sandbox)["passed"] == 164
    assert score_humaneval(items[:20], ["    pass"] * 20, sandbox)["passed"] == 0
