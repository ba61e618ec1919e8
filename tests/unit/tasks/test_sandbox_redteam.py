"""Red-team findings of issue #18: each attack a sample could make on the machine or on its own score.

Every test here failed on the sandbox before the fix (secrets in the child's own environment, other processes'
command lines in /proc, the checkout and the store readable, /run/lock persistent, memfd past the memory limit,
``os._exit(0)`` scored as a pass, no refusal as root without namespaces)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtime.tasks.sandbox as sandbox_mod
from runtime.tasks import load_items
from runtime.tasks.sandbox import Sandbox, SandboxLimits, SandboxRefusedError, namespaces_available
from runtime.tasks.scoring import score_humaneval

REPO = Path(__file__).resolve().parents[3]
FAST = SandboxLimits(timeout_s=5, cpu_s=5)
needs_namespaces = pytest.mark.skipif(not namespaces_available(),
                                      reason="needs root with namespaces (the isolated mode)")


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(FAST, allow_unsafe=not namespaces_available())


def clean_or_found(sandbox: Sandbox, program: str) -> str:
    result = sandbox.run(program)
    assert result.passed, result.stderr
    return result.stdout.strip()


@pytest.fixture(params=["isolated", "unsafe"])
def either_sandbox(request, monkeypatch) -> Sandbox:
    """The namespaces mode where this machine has it, and the process mode (as if it had not) with the opt-in."""
    if request.param == "isolated":
        if not namespaces_available():
            pytest.skip("needs root with namespaces (the isolated mode)")
        return Sandbox(FAST)
    monkeypatch.setattr(sandbox_mod, "namespaces_available", lambda: False)
    return Sandbox(FAST, allow_unsafe=True)


def test_a_secret_in_the_parent_environment_is_not_in_the_child(either_sandbox: Sandbox, monkeypatch):
    monkeypatch.setenv("MIXMERGE_FAKE_SECRET", uuid.uuid4().hex)
    program = """
import ctypes, os
found = [k for k in os.environ if k == "MIXMERGE_FAKE_SECRET"]
for path in ("/proc/self/environ", "/proc/1/environ", f"/proc/{os.getppid()}/environ"):
    try:
        if b"MIXMERGE_FAKE_SECRET" in open(path, "rb").read():
            found.append(path)
    except OSError:
        pass
# the strings the process was exec'd with sit above argv[0] on its own stack, whatever os.environ says now
libc = ctypes.CDLL(None)
addr = ctypes.c_void_p.in_dll(libc, "program_invocation_name").value & ~4095
stack = b""
while len(stack) < 1 << 20 and libc.msync(ctypes.c_void_p(addr), 4096, 1) == 0:  # msync fails past the mapping
    stack += ctypes.string_at(addr, 4096)
    addr += 4096
if b"MIXMERGE_FAKE_SECRET" in stack:
    found.append("stack")
print("found " + " ".join(found) if found else "clean")
"""
    assert clean_or_found(either_sandbox, program) == "clean"


@pytest.fixture
def process_with_secret() -> Iterator[str]:
    secret = f"--api-key=sk-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", secret])
    try:
        yield secret
    finally:
        proc.kill()
        proc.wait()


@needs_namespaces
def test_other_processes_and_their_command_lines_are_hidden(sandbox: Sandbox, process_with_secret: str):
    program = f"""
import os
needle = {process_with_secret[:20]!r} + {process_with_secret[20:]!r}
seen = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if needle.encode() in open(f"/proc/{{pid}}/cmdline", "rb").read():
            seen.append(pid)
    except OSError:
        pass
others = [p for p in filter(str.isdigit, os.listdir("/proc")) if int(p) not in (os.getpid(),)]
print("found" if seen else "hidden", len(others))
"""
    verdict, others = clean_or_found(sandbox, program).split()
    assert verdict == "hidden"
    assert int(others) == 0  # not even the sandbox's own supervisor (PID 1) is visible to the sample


@pytest.fixture
def store_and_home_secrets(monkeypatch) -> Iterator[list[Path]]:
    (REPO / "runs").mkdir(exist_ok=True)
    store = Path(tempfile.mkdtemp(prefix="sandbox-store-", dir=REPO / "runs"))
    monkeypatch.setenv("MIXMERGE_HOME", str(store))
    secrets = [store / "weights.bin", Path.home() / f".mixmerge-secret-{uuid.uuid4().hex}"]
    for path in secrets:
        path.write_text("secret")
    try:
        yield [*secrets, REPO / "pyproject.toml", REPO / "runtime" / "bench" / "sandbox.py"]
    finally:
        secrets[1].unlink()
        secrets[0].unlink()
        store.rmdir()


@needs_namespaces
def test_the_checkout_the_home_and_the_model_store_are_unreadable(sandbox: Sandbox,
                                                                   store_and_home_secrets: list[Path]):
    program = f"""
import os
read = []
for path in {[str(p) for p in store_and_home_secrets]!r}:
    try:
        open(path).read()
        read.append(path)
    except OSError:
        pass
for folder in {[str(REPO), str(Path.home()), os.environ["MIXMERGE_HOME"]]!r}:
    try:
        if os.listdir(folder):
            read.append(folder)
    except OSError:
        pass
print("read " + " ".join(read) if read else "hidden")
"""
    assert clean_or_found(sandbox, program) == "hidden"


@needs_namespaces
def test_files_written_to_run_and_run_lock_do_not_persist(sandbox: Sandbox):
    name = f"mixmerge-escape-{uuid.uuid4().hex}"
    targets = [f"/run/lock/{name}", f"/run/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}"]
    writer = f"""
for t in {targets!r}:
    try:
        open(t, "w").write("x")
    except OSError:
        pass
"""
    sandbox.run(writer)
    assert not any(os.path.exists(t) for t in targets)
    reader = f"import os\nprint(sum(os.path.exists(t) for t in {targets!r}))"
    assert clean_or_found(sandbox, reader) == "0"  # nor does the next sample see them


@needs_namespaces
def test_shared_memory_cannot_hold_more_than_the_memory_limit():
    limit_mb = 256
    sandbox = Sandbox(SandboxLimits(timeout_s=20, cpu_s=20, memory_mb=limit_mb))
    program = f"""
import os
chunk = b"x" * (8 << 20)
held, fds = 0, []
try:
    while held < {int(limit_mb * 1.5)} << 20:
        fd = os.memfd_create("hog")
        os.write(fd, chunk)
        fds.append(fd)
        held += len(chunk)
except OSError:
    pass
shm = 0
try:
    with open("/dev/shm/hog", "wb") as f:
        while shm < {int(limit_mb * 1.5)} << 20:
            f.write(chunk)
            shm += len(chunk)
except OSError:
    pass
print(held >> 20, shm >> 20)
"""
    result = sandbox.run(program)
    memfd_mb, shm_mb = map(int, result.stdout.split())
    assert memfd_mb < limit_mb and shm_mb < limit_mb


def test_memfd_is_refused_in_either_mode(either_sandbox: Sandbox):
    result = either_sandbox.run("import os\nos.memfd_create('hog')")
    assert result.status == "failed" and "PermissionError" in result.stderr


@pytest.mark.parametrize("exit_early", ["import os\nos._exit(0)", "raise SystemExit(0)", "import sys\nsys.exit()",
                                        "exit()"])
def test_exiting_before_the_end_is_not_a_pass(sandbox: Sandbox, exit_early: str):
    result = sandbox.run(f"{exit_early}\nassert False, 'the tests never ran'")
    assert result.returncode == 0 or result.status == "failed"
    assert not result.passed


def test_humaneval_bodies_that_exit_early_all_fail(sandbox: Sandbox):
    items = load_items("humaneval", "test")[:4]
    bodies = ["    import os\n    os._exit(0)", "    import sys\n    sys.exit(0)", "    quit()",
              "    raise SystemExit"]
    assert score_humaneval(items, bodies, sandbox)["passed"] == 0


def test_a_forged_marker_is_not_a_pass(sandbox: Sandbox):
    program = """
import os, sys
for guess in ("PASSED", "ok", "__MIXMERGE_SANDBOX_DONE__", "0" * 32, "passed " + "0" * 32):
    print(guess)
    for fd in range(3, 32):
        try:
            os.write(fd, (guess + "\\n").encode())
        except OSError:
            pass
sys.stdout.flush()
os._exit(0)
"""
    result = sandbox.run(program)
    assert result.status == "failed" and not result.passed


def test_passing_output_is_not_polluted_by_the_marker(sandbox: Sandbox):
    result = sandbox.run("print('a')\nprint('b', end='')")
    assert result.passed and result.stdout == "a\nb"


@pytest.fixture
def root_without_namespaces(monkeypatch) -> None:
    monkeypatch.setattr(sandbox_mod, "namespaces_available", lambda: False)
    monkeypatch.setattr(sandbox_mod.os, "geteuid", lambda: 0)
    monkeypatch.delenv("MIXMERGE_UNSAFE_SANDBOX", raising=False)


def test_root_without_namespaces_is_refused(root_without_namespaces):
    with pytest.raises(SandboxRefusedError, match="--unsafe-sandbox"):
        Sandbox()


def test_root_without_namespaces_runs_only_when_the_user_opts_in(root_without_namespaces, monkeypatch):
    unsafe = Sandbox(FAST, allow_unsafe=True).isolation
    assert unsafe["mode"] == "process" and unsafe["safe"] is False and "UNSAFE" in str(unsafe["warning"])
    monkeypatch.setenv("MIXMERGE_UNSAFE_SANDBOX", "1")
    assert Sandbox().isolation["safe"] is False


def test_the_unsafe_mode_still_needs_the_tests_to_run(root_without_namespaces):
    sandbox = Sandbox(FAST, allow_unsafe=True)
    assert sandbox.run("assert sum([1, 2]) == 3\nprint('ok')").stdout == "ok\n"
    assert sandbox.run("assert sum([1, 2]) == 3").passed
    assert not sandbox.run("import os\nos._exit(0)").passed


@needs_namespaces
def test_the_isolated_mode_reports_what_it_guards():
    iso = Sandbox().isolation
    assert iso["mode"] == "namespaces" and iso["safe"] is True and "warning" not in iso
    assert {"environment", "processes", "filesystem", "shared_memory", "pass_criterion"} <= iso.keys()
