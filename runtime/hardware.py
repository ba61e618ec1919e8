"""What this machine can do, asked in one place: a GPU (and the memory in use on it), fast bf16 arithmetic (the
engines' `dtype: auto`), where the `hf` engine runs (`device: auto`) and the memory allocator every `runtime`
process runs on (tcmalloc where installed)."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

# Debian's libtcmalloc-minimal4 (the Makefile installs it where apt-get can), and other distributions' paths
TCMALLOC = tuple(f"{lib}/libtcmalloc_minimal.so.4" for lib in (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"))


@functools.cache
def gpu_name() -> str | None:
    """The first CUDA device's name, or None without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def gpu_present() -> bool:
    return gpu_name() is not None


@functools.cache
def bf16_supported(device: str | None = None) -> bool:
    """bf16 pays off on GPUs that support it and on CPUs with AVX512-BF16 or AMX (2.9x fp32's decode speed for
    Qwen2.5-Coder-0.5B on this 2-core EPYC); elsewhere it is emulated and slower than fp32. ``device``: where it
    will run ("cpu" or "cuda"); None: the GPU where there is one."""
    if device == "cuda" or (device is None and gpu_present()):
        import torch

        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """An engine's dtype: ``auto`` is bfloat16 where the hardware it runs on (``device``; None: the GPU where there
    is one) computes it natively, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_supported(device) else "float32"


def served_on(config) -> tuple[str | None, str]:
    """Where an engine config computes and in what dtype: the `hf` engine's device (``engine.device``) and the
    dtype resolved for it; other engines run where their build runs (device None)."""
    device = resolve_device(config.device) if config.kind == "hf" else None
    return device, resolve_dtype(config.dtype, device)


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """The `hf` engine's device: ``auto`` is the first GPU where one is visible, else the CPU; ``cuda`` without a
    visible GPU is an error (a deployment written for a GPU machine must not silently crawl on a CPU)."""
    from runtime.errors import BadRequestError

    if device not in DEVICES:
        raise BadRequestError(f"unknown device '{device}'", fix=f"use one of: {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if gpu_present() else "cpu"
    if device == "cuda" and not gpu_present():
        raise BadRequestError("engine.device is cuda but torch sees no GPU here",
                              fix="set engine.device to auto or cpu, or install a CUDA build of torch")
    return device


def gpu_memory_mb() -> float | None:
    """Memory in use on GPU 0 (nvidia-smi), or None without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return float(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None


def allocator_env(env: Mapping[str, str], candidates: tuple[str, ...] = TCMALLOC) -> dict[str, str] | None:
    """``env`` with tcmalloc preloaded, for a `runtime` process to run itself again on; None where it already is,
    where none is installed, or where ``MIXMERGE_MALLOC=system`` keeps glibc's malloc.

    Why: torch frees its large CPU buffers (activations, a batch's logits) and allocates them again every step;
    glibc hands blocks over 32 MB back to the kernel each time, so every step faults fresh zeroed pages in. On this
    2-core EPYC, 6 steps of the Qwen 0.5B review expert took 124 s with glibc (45 s of system time) and 99 s with
    tcmalloc (13 s), and the hf engine served 1.12-1.15x the tokens/s (benchmarks/allocator.py). vLLM's CPU guide
    preloads it for the same reason; glibc's own tunables did not help (its mmap threshold stops at 32 MB)."""
    if env.get("MIXMERGE_MALLOC") == "system" or "tcmalloc" in env.get("LD_PRELOAD", ""):
        return None
    lib = next((c for c in candidates if os.path.isfile(c)), None)
    if lib is None:
        return None
    return dict(env) | {"LD_PRELOAD": ":".join(p for p in (lib, env.get("LD_PRELOAD")) if p)}
