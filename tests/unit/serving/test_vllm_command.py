"""The vLLM server's command line and environment: what the engine config turns into (no vLLM needed)."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.config import EngineConfig
from runtime.engines.vllm import vllm_command, vllm_env


def _cmd(config: EngineConfig, gpu: bool, adapters: dict[str, Path] | None = None) -> list[str]:
    return vllm_command(Path("/m/base"), "base", adapters or {}, config, "/run/x/api.sock", gpu)


def test_compiles_on_a_gpu_and_runs_eager_on_a_cpu_unless_told():
    default = EngineConfig(kind="vllm")
    assert "--enforce-eager" in _cmd(default, gpu=False)
    assert "--enforce-eager" not in _cmd(default, gpu=True)
    assert "--enforce-eager" not in _cmd(EngineConfig(kind="vllm", compile=True), gpu=False)
    assert "--enforce-eager" in _cmd(EngineConfig(kind="vllm", compile=False), gpu=True)


def test_lora_rank_is_the_largest_adapter_or_the_config(tmp_path: Path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "adapter_config.json").write_text(json.dumps({"r": 64}))
    cmd = _cmd(EngineConfig(kind="vllm", max_lora_rank=16), gpu=False, adapters={"big": big})
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64"
    assert f"big={big}" in cmd
    assert "--enable-lora" not in _cmd(EngineConfig(kind="vllm"), gpu=False)


def test_the_server_listens_on_its_unix_socket_only():
    cmd = _cmd(EngineConfig(kind="vllm"), gpu=False)
    assert cmd[cmd.index("--uds") + 1] == "/run/x/api.sock"
    assert not {"--host", "--port"} & set(cmd)


def test_the_api_key_goes_into_the_environment_and_never_into_argv():
    key = "k-" + "s3cret" * 5
    env = vllm_env({"PATH": "/bin", "VLLM_API_KEY": "inherited", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}, key)
    assert env["VLLM_API_KEY"] == key  # ours wins over one the runtime itself was started with
    assert env["PATH"] == "/bin" and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    cmd = _cmd(EngineConfig(kind="vllm"), gpu=False)
    assert "--api-key" not in cmd and not any(key in arg for arg in cmd)


def test_vllm_keeps_every_core_for_its_workers_on_a_small_machine():
    assert vllm_env({}, "k", cpus=2)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in vllm_env({}, "k", cpus=16)  # vLLM's own default there
    assert vllm_env({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, "k", cpus=2)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
