import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from runtime.cli import app

runner = CliRunner()


def test_models_list_empty_then_registered(store_home: Path, tiny_model_dir: Path):
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0 and "runtime models pull smollm2-135m" in result.output
    result = runner.invoke(app, ["models", "register", "tiny", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["models", "list", "--json"])
    rows = json.loads(result.output)
    assert [(r["name"], r["kind"]) for r in rows] == [("tiny", "base")]
    assert rows[0]["size_bytes"] > 0


def test_models_remove_takes_several_names_and_removes_none_if_one_is_unknown(store_home: Path, tiny_model_dir: Path):
    for name in ("a", "b"):
        assert runner.invoke(app, ["models", "register", name, str(tiny_model_dir)]).exit_code == 0
    result = runner.invoke(app, ["models", "remove", "a", "nope"])
    assert result.exit_code != 0 and "unknown model(s) nope; nothing was removed" in str(result.exception)
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
    assert sorted(r["name"] for r in listed) == ["a", "b"]  # nothing went
    result = runner.invoke(app, ["models", "remove", "a", "b"])
    assert result.exit_code == 0 and "removed a" in result.output and "removed b" in result.output
    assert json.loads(runner.invoke(app, ["models", "list", "--json"]).output) == []


def test_cli_errors_are_one_line_with_a_fix_and_exit_2(store_home: Path):
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "models", "pull", "nope"],
                          capture_output=True, text=True, env={"MIXMERGE_HOME": str(store_home), "PATH": ""})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'nope'; pull one of")


def test_help_lists_only_working_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "models" in result.output


def test_bench_progress_prints_lines_where_no_terminal_draws_the_bars():
    """In a log file or CI rich draws no live bars: each phase still says where it starts and when it ends."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from runtime.cli import _progress_bars

    sink = io.StringIO()
    with Progress(console=Console(file=sink, force_terminal=False, width=120)) as bars:
        progress = _progress_bars(bars)
        progress.phase("base/hf accuracy", 3)
        for _ in range(3):
            progress.advance()
        progress.say("base on hf: starting the server")
    text = sink.getvalue()
    assert "base/hf accuracy: 0/3" in text
    assert "base/hf accuracy: 3/3 after" in text  # the finished phase, whatever the minute
    assert "starting the server" in text


def _allocator_of_a_served_process(home: Path, tiny_model_dir: Path, **env: str) -> bool:
    """Whether a real `runtime serve` process (the fake engine) has tcmalloc mapped."""
    import os
    import socket
    import time

    import httpx

    assert runner.invoke(app, ["models", "register", "tiny", str(tiny_model_dir)]).exit_code == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "runtime"), "serve", "--model", "tiny", "--engine",
                             "fake", "--port", str(port)], env=os.environ | {"MIXMERGE_HOME": str(home)} | env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return "libtcmalloc" in Path(f"/proc/{proc.pid}/maps").read_text()  # the same pid after exec
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("the server did not start")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runtime_processes_run_on_tcmalloc_where_it_is_installed(store_home: Path, tiny_model_dir: Path):
    import pytest

    from runtime.hardware import TCMALLOC

    if not any(Path(p).is_file() for p in TCMALLOC):
        pytest.skip("tcmalloc is not installed here (the Makefile installs libtcmalloc-minimal4 where it can)")
    assert _allocator_of_a_served_process(store_home, tiny_model_dir)
    assert not _allocator_of_a_served_process(store_home, tiny_model_dir, MIXMERGE_MALLOC="system")


def test_the_allocator_is_preloaded_once_and_beside_what_is_there(tmp_path: Path):
    from runtime.hardware import allocator_env

    lib = tmp_path / "libtcmalloc_minimal.so.4"
    assert allocator_env({"PATH": "/bin"}, (str(lib),)) is None  # not installed
    lib.touch()
    assert allocator_env({"PATH": "/bin"}, (str(lib),)) == {"PATH": "/bin", "LD_PRELOAD": str(lib)}
    assert allocator_env({"LD_PRELOAD": "/x/libfoo.so"}, (str(lib),))["LD_PRELOAD"] == f"{lib}:/x/libfoo.so"
    assert allocator_env({"LD_PRELOAD": str(lib)}, (str(lib),)) is None  # already: no second exec
    assert allocator_env({"MIXMERGE_MALLOC": "system"}, (str(lib),)) is None
