"""Start a real `runtime serve` in a child process on 127.0.0.1 and wait until it answers (cold start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runtime.process import ChildProcess, free_port, http_probe


class ServerProcess:
    """``with ServerProcess(["--deployment", "experts"]) as srv: srv.url`` -> http://127.0.0.1:PORT/v1"""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, startup_timeout_s: float = 900) -> None:
        self.port = free_port()
        self.args = args
        self.env = os.environ | (env or {})
        self.startup_timeout_s = startup_timeout_s
        self.cold_start_s = 0.0
        runtime = Path(sys.executable).parent / "runtime"
        self.child = ChildProcess([str(runtime), "serve", *self.args, "--port", str(self.port)], self.env,
                                  "runtime-serve")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def process(self) -> subprocess.Popen | None:
        return self.child.process

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    def __enter__(self) -> ServerProcess:
        self.child.start()
        probe = http_probe(f"http://127.0.0.1:{self.port}/health")
        self.cold_start_s = self.child.wait_healthy(probe, self.startup_timeout_s)  # stops the child if it fails
        return self

    def tail(self, lines: int = 6) -> str:
        return self.child.tail(lines)

    def __exit__(self, *exc) -> None:
        self.child.stop(grace_s=60)
