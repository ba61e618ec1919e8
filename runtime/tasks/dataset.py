"""Build, cache and load the task data: JSONL per task and split, plus a dataset card.

    $MIXMERGE_HOME/data/stdlib-py<version>-<source hash>/
        card.json                     counts per task and split, interpreter, source hash, build time
        <task>/<split>.jsonl          one TaskItem per line

The folder name carries the interpreter version and a hash of the source files, so a different interpreter
builds its own data; the build is atomic, so an interrupted build leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections import Counter
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from runtime.artifacts import atomic_dir
from runtime.errors import BadRequestError
from runtime.models import mixmerge_home
from runtime.tasks.builders import TaskItem
from runtime.tasks.humaneval import load_humaneval
from runtime.tasks.registry import TASKS, TRAINED, get_task
from runtime.tasks.source import SPLITS, collect, split_by_module, stdlib_dir
from runtime.tasks.views import VIEW, view

log = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = tuple(SPLITS)
CARD = "card.json"


def data_root(home: Path | None = None) -> Path:
    return (home or mixmerge_home()) / "data"


def build_dataset(home: Path | None = None, step=log.info) -> Path:
    """Build (or find) the dataset for the running interpreter; returns its folder."""
    functions, source_hash = collect(stdlib_dir())
    final = data_root(home) / f"stdlib-py{platform.python_version()}-{source_hash[:12]}"
    if (final / CARD).is_file():
        return final
    step(f"building task data from {len(functions)} standard-library functions")
    start = time.time()
    splits = split_by_module(functions)
    with atomic_dir(final) as tmp:
        counts: dict[str, dict[str, int]] = {}
        for task, builder in ((t, TASKS[t].build) for t in TRAINED):
            counts[task] = {}
            for split, fns in splits.items():
                items = [it for fn in fns if (it := builder(fn, split)) is not None]
                items.sort(key=lambda it: hashlib.sha256(it.id.encode()).hexdigest())  # any prefix is a fair sample
                counts[task][split] = _write_jsonl(tmp / task / f"{split}.jsonl", items)
        counts["humaneval"] = {"test": _write_jsonl(tmp / "humaneval" / "test.jsonl", load_humaneval())}
        card = {
            "schema": 1,
            "python": platform.python_version(),
            "stdlib": str(stdlib_dir()),
            "source_hash": source_hash,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.time() - start, 1),
            "functions": {s: len(f) for s, f in splits.items()},
            "modules": {s: len({f.module for f in fns}) for s, fns in splits.items()},
            "items": counts,
            "review": _review_stats(tmp / "review"),
            "content_hash": _content_hash(tmp),
        }
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
    step(f"task data ready at {final}")
    return final


def _write_jsonl(path: Path, items: list[TaskItem]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for item in items:
            f.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
    return len(items)


def _review_stats(folder: Path) -> dict[str, object]:
    kinds: Counter[str] = Counter()
    clean = total = 0
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            meta = json.loads(line)["meta"]
            total += 1
            clean += bool(meta["clean"])
            if not meta["clean"]:
                kinds[meta["kind"]] += 1
    return {"clean_share": round(clean / max(total, 1), 3), "bug_kinds": dict(sorted(kinds.items()))}


def _content_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.jsonl")):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=4)
def _dataset_dir(home: Path) -> Path:
    return build_dataset(home)


def dataset_dir(home: Path | None = None) -> Path:
    """The dataset folder for ``home`` (default: the current $MIXMERGE_HOME), built on first use."""
    return _dataset_dir(home or mixmerge_home())


def load_card(home: Path | None = None) -> dict[str, object]:
    """The data card as models see the data: ``content_hash`` covers the stored items and the views that crop
    them (``views.VIEW``), so whatever is keyed by it (eval.json, the bench's answer cache, training manifests)
    changes when either does; ``stored_content_hash`` is card.json's own."""
    card = json.loads((dataset_dir(home) / CARD).read_text())
    seen = hashlib.sha256((card["content_hash"] + json.dumps(VIEW, sort_keys=True)).encode()).hexdigest()
    return card | {"content_hash": seen, "stored_content_hash": card["content_hash"], "views": VIEW}


def load_items(task: str, split: str, limit: int | None = None, home: Path | None = None,
               raw: bool = False) -> list[TaskItem]:
    """Items of one task and split, in file order (the first ``limit`` are a fixed, reproducible sample), as
    models see them (long inputs cropped by ``views.view``, the same in training, eval and the bench); ``raw``:
    as stored, whole functions."""
    get_task(task)  # an unknown name is a one-line error naming the known ones
    if split not in SPLIT_NAMES:
        raise BadRequestError(f"unknown split '{split}'", fix=f"use one of: {', '.join(SPLIT_NAMES)}")
    path = dataset_dir(home) / task / f"{split}.jsonl"
    if not path.is_file():
        raise BadRequestError(f"task '{task}' has no '{split}' split", fix="HumanEval has only the test split")
    items = []
    with path.open() as f:
        for line in f:
            if limit is not None and len(items) >= limit:
                break
            item = TaskItem(**json.loads(line))
            items.append(item if raw else view(item))
    return items
