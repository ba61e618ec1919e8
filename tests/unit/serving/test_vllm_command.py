"""The vLLM server's command line: what the engine config turns into (no vLLM needed)."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.config import EngineConfig
from runtime.engines.vllm import vllm_command


def _cmd(config: EngineConfig, gpu: bool, adapters: dict[str, Path] | None = None) -> list[str]:
    return vllm_command(Path("/m/base"), "base", adapters or {}, config, 8001, gpu)


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
