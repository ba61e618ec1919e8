"""Paired differences of an experiment's answers against the default report's base and shipped experts, on the
same items: `.venv/bin/python benchmarks/results/2026-11-26-qwen2.5-coder-0.5b-cpu/experiments/compare.py
humaneval-gen-sdft-lr1e4` (reads its humaneval.jsonl and generation.jsonl; the tests run in the sandbox)."""
import json
import sys
from pathlib import Path

from runtime.bench.compare import difference
from runtime.tasks import load_items

HERE = Path(__file__).resolve().parent
REPORT = HERE.parents[1] / "2026-11-27-qwen2.5-coder-0.5b-cpu" / "bench" / "answers"


def answers(path: Path) -> dict[str, str]:
    return {row["id"]: row["answer"] for row in map(json.loads, path.read_text().splitlines())}


out = {}
for task in ("humaneval", "generation"):
    path = HERE / sys.argv[1] / f"{task}.jsonl"
    if not path.is_file():
        continue
    mine = answers(path)
    items = [it for it in load_items(task, "test") if it.id in mine]
    for other in ("base", "qwen-experts"):
        theirs = answers(REPORT / other / f"{task}.jsonl")
        d = difference(task, items, [mine[it.id] for it in items], [theirs[it.id] for it in items], 1000)
        out[f"{task}: {sys.argv[1]} - {other}"] = {"n": len(items), "diff": round(d["diff"], 1),
                                                   "ci95": [round(x, 1) for x in d["ci95"]]}
print(json.dumps(out, indent=1))
