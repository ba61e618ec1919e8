"""How torch's OpenMP threads wait between parallel regions, alone and on shared cores.

    .venv/bin/python benchmarks/omp_wait.py [--model smollm2-135m] [--seconds 20] [--policies default,passive,...]

libgomp (torch's OpenMP on Linux) spins a waiting thread before it sleeps (``OMP_WAIT_POLICY`` unset: up to
``GOMP_SPINCOUNT`` 300,000 spins; ``ACTIVE``: spin for ever; ``PASSIVE``: sleep at once unless ``GOMP_SPINCOUNT`` is
set). Alone, spinning saves a wake-up at every barrier; when two torch processes share the cores, each one's
spinning threads burn the time slices the other's threads need to reach the barrier. Each setting runs in fresh
processes (libgomp reads the environment once): greedy decode of the bare model with a KV cache (bf16), batch 1
and batch 8, for ``--seconds`` each; first one process alone, then two identical processes at once (the sum of
their tokens/s). Prints one markdown table. The machine should otherwise be idle (the script says the load
average before each run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {  # name -> environment
    "default": {},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "passive+spin10k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"},
}


def worker(model_name: str, batch: int, seconds: float) -> dict:
    """Decode steps for ``seconds`` (after a warm-up): tokens/s of ``batch`` rows."""
    import torch
    from transformers import AutoModelForCausalLM

    sys.path[:0] = [str(ROOT)]
    from runtime.models import ModelStore

    model = AutoModelForCausalLM.from_pretrained(ModelStore().get(model_name).path, dtype=torch.bfloat16).eval()
    ids = torch.randint(100, 1000, (batch, 64))
    with torch.inference_mode():
        for _ in range(2):
            step_loop(model, ids, 8)
        start, tokens = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            tokens += batch * step_loop(model, ids, 16)
    return {"tok_s": tokens / (time.perf_counter() - start), "threads": torch.get_num_threads()}


def step_loop(model, ids, steps: int) -> int:
    """Prefill ``ids``, then ``steps`` greedy decode steps with the KV cache; the steps taken."""
    out = model(input_ids=ids, use_cache=True)
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return steps


def run(policy: str, model: str, batch: int, seconds: float, copies: int) -> float:
    """Sum of tokens/s of ``copies`` worker processes started together under ``policy``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env |= POLICIES[policy] | {"PYTHONNOUSERSITE": "1"}
    cmd = [sys.executable, __file__, "--worker", model, str(batch), str(seconds)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(copies)]
    return sum(json.loads(p.communicate()[0].strip().splitlines()[-1])["tok_s"] for p in procs)


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    print(f"{args.model}, bf16, {args.seconds:g} s per cell; tokens/s (two processes: their sum)\n")
    print("| policy | batch | alone | two at once | two ÷ alone | load avg before |")
    print("|---|---:|---:|---:|---:|---:|")
    for policy in args.policies.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            load = os.getloadavg()[0]
            alone = run(policy, args.model, batch, args.seconds, 1)
            shared = run(policy, args.model, batch, args.seconds, 2)
            print(f"| {policy} | {batch} | {alone:.1f} | {shared:.1f} | {shared / alone:.2f} | {load:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
