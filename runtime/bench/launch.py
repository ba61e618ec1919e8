"""Start a real `runtime serve` in a child process on 127.0.0.1 and wait until it answers (cold start)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from runtime.engines.vllm import free_port  # one helper for every child server we start
from runtime.errors import EngineUnavailableError


class ServerProcess:
    """``with ServerProcess(["--deployment", "experts"]) as srv: srv.url`` -> http://127.0.0.1:PORT/v1"""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, startup_timeout_s: float = 900) -> None:
        self.port = free_port()
        self.args = args
        self.env = os.environ | (env or {})
        self.startup_timeout_s = startup_timeout_s
        self.cold_start_s = 0.0
        self.log = tempfile.NamedTemporaryFile(prefix="mixmerge-serve-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ServerProcess:
        runtime = Path(sys.executable).parent / "runtime"
        cmd = [str(runtime), "serve", *self.args, "--port", str(self.port)]
        start = time.perf_counter()
        self.process = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = start + self.startup_timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise EngineUnavailableError(f"runtime serve exited with {self.process.returncode}: "
                                             f"{self.tail()}", fix=f"see {self.log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    self.cold_start_s = time.perf_counter() - start
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise EngineUnavailableError(f"runtime serve did not answer within {self.startup_timeout_s:.0f} s")

    def tail(self, lines: int = 6) -> str:
        return " | ".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
