"""glibc's malloc against tcmalloc for `runtime` processes, side by side in one run, each in fresh processes.

    .venv/bin/python benchmarks/allocator.py [--model qwen2.5-coder-0.5b] [--steps 6] [--rounds 2]

`runtime` runs itself again on tcmalloc where it is installed (runtime/hardware.py, ``allocator_env``);
``MIXMERGE_MALLOC=system`` keeps glibc's. Per round, in alternating order: a short LoRA training (`runtime train`
on the review expert's recipe for ``--steps`` steps, no evaluation during it), its ``train_runtime`` and the
system CPU time of the process; then a real `runtime serve` of ``qwen-base`` (hf engine) under each allocator,
output tok/s of 6 streamed 32-token requests at concurrency 1 and 32 at concurrency 8 (new prompts, fixed length).
Prints JSON; the summary is in benchmarks/README.md ("allocator.py").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

ALLOCATORS = {"glibc": {"MIXMERGE_MALLOC": "system"}, "tcmalloc": {}}


def train_once(label: str, home: Path, steps: int, i: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [str(Path(sys.executable).parent / "runtime"), "train", "--config",
         str(ROOT / "configs/train/qwen-lora-review.yaml"), f"name=alloc-{label}-{i}", f"max_steps={steps}",
         "eval_steps=1000", "eval_on_start=false"],
        env=os.environ | {"MIXMERGE_HOME": str(home)} | ALLOCATORS[label], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = re.search(r"'train_runtime': '([0-9.]+)'", out.stdout + out.stderr)
    if out.returncode or not found:
        raise RuntimeError(f"training under {label} failed:\n{(out.stdout + out.stderr)[-2000:]}")
    return {"train_runtime_s": float(found.group(1)), "user_s": round(after.ru_utime - before.ru_utime, 1),
            "sys_s": round(after.ru_stime - before.ru_stime, 1)}


def serve_once(label: str) -> dict:
    from serving import with_single  # benchmarks/serving.py: one warm-up / c=1 / c=8 loop for every server

    r = with_single(["--deployment", "qwen-base"], 32, 32, 8, 6, env=ALLOCATORS[label])
    return {"c1_out_tok_s": round(r["c1"]["output_throughput"], 1), "c8_out_tok_s": round(r["output_throughput"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from runtime.hardware import TCMALLOC
    from runtime.models import ModelStore

    if not any(Path(p).is_file() for p in TCMALLOC):
        raise SystemExit("tcmalloc is not installed: apt-get install libtcmalloc-minimal4 (`make setup` does)")
    base = ModelStore().get(args.model)
    results: dict[str, list[dict]] = {label: [] for label in ALLOCATORS}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "models").mkdir()
        (home / "models" / args.model).symlink_to(base.path)  # trainings write only into this scratch store
        for i in range(args.rounds):
            order = list(ALLOCATORS) if i % 2 == 0 else list(reversed(ALLOCATORS))
            for label in order:
                results[label].append(train_once(label, home, args.steps, i) | serve_once(label))
                print(json.dumps({label: results[label][-1]}), flush=True)
    print(json.dumps({"model": args.model, "steps": args.steps, "load_average": os.getloadavg(), "runs": results},
                     indent=2))


if __name__ == "__main__":
    main()
