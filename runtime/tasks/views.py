"""What a model sees of an item: long inputs cropped by lines, the same way in training, evaluation and the bench.

The stored items keep whole functions (the data card's hash is over them); ``load_items`` returns them through
``view``, so a training row, an eval prompt and a bench request of one item show the same text:

- review: a window of at most ``REVIEW_WINDOW`` consecutive numbered lines with their original numbers, so
  "line: N" answers stay right. A buggy item's window holds the bug line at a seeded random position; a clean
  item's window is placed the same way around a line a bug could have been seeded on (the builders' own draw),
  so neither the window's place nor the bug's place in it tells a clean item from a buggy one;
- completion: the prefix's last ``COMPLETION_LINES`` lines (the next line depends mostly on them);
- summarization: the function's first ``SUMMARIZATION_LINES`` lines (signature and the start of the body);
- generation and HumanEval: unchanged (signature and docstring are the task; their length is counted at build).

A cropped item's ``meta["view"]`` says which lines it shows: ``{"lines": [first, last], "of": total}`` (1-based).
``crop_counts`` counts them per task, for the training manifest and the bench report.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterable

from runtime.tasks.builders import TaskItem, rng_for
from runtime.tasks.mutations import mutate

REVIEW_WINDOW = 20  # lines; ~12 tokens a numbered line: the window's prompt is ~350 Qwen tokens at most
COMPLETION_LINES = 24  # lines of context before the line to write
SUMMARIZATION_LINES = 40  # lines from the def on
# recorded in manifests and hashed into load_card's content_hash: bump the version when the cropping rules change
VIEW = {"version": 1, "review_window": REVIEW_WINDOW, "completion_lines": COMPLETION_LINES,
        "summarization_lines": SUMMARIZATION_LINES}


def view(item: TaskItem) -> TaskItem:
    """The item as models see it (a new item where its input is cropped, the item itself otherwise)."""
    lines = item.input.splitlines()
    if item.task == "review" and len(lines) > REVIEW_WINDOW:
        first = window_start(len(lines), _anchor_line(item, lines), REVIEW_WINDOW, rng_for(f"window/{item.id}"))
        return _cropped(item, lines, first, first + REVIEW_WINDOW - 1)
    if item.task == "completion" and len(lines) > COMPLETION_LINES:  # the exact tail: a blank last line stays
        tail = "".join(item.input.splitlines(keepends=True)[-COMPLETION_LINES:])
        return _cropped(item, lines, len(lines) - COMPLETION_LINES + 1, len(lines), tail)
    if item.task == "summarization" and len(lines) > SUMMARIZATION_LINES:
        return _cropped(item, lines, 1, SUMMARIZATION_LINES)
    return item


def window_start(n_lines: int, anchor: int, size: int, rng) -> int:
    """First line (1-based) of a ``size``-line window of ``n_lines`` that holds line ``anchor``, uniform over
    every such window."""
    low, high = max(1, anchor - size + 1), min(anchor, n_lines - size + 1)
    return rng.randint(low, high)


def _cropped(item: TaskItem, lines: list[str], first: int, last: int, shown: str | None = None) -> TaskItem:
    shown = "\n".join(lines[first - 1:last]) if shown is None else shown
    return dataclasses.replace(item, input=shown, meta={**item.meta, "view": {"lines": [first, last],
                                                                              "of": len(lines)}})


def _anchor_line(item: TaskItem, numbered_lines: list[str]) -> int:
    """The bug's line, or for a clean item a line a bug could have been seeded on (1-based)."""
    if not item.meta.get("clean"):
        return int(item.meta["line"])  # type: ignore[arg-type]
    code = "\n".join(line.split(" | ", 1)[1] if " | " in line else "" for line in numbered_lines)
    mutant = mutate(code, rng_for(f"window-anchor/{item.id}"), skip_lines=_docstring_lines(code))
    if mutant is not None:
        return mutant.line + 1
    return rng_for(f"window-anchor/{item.id}").randint(1, len(numbered_lines))


def _docstring_lines(code: str) -> range:
    try:
        fn = ast.parse(code).body[0]
    except (SyntaxError, IndexError):
        return range(0)
    body = getattr(fn, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return range(body[0].lineno - 1, (body[0].end_lineno or body[0].lineno))
    return range(0)


def crop_counts(items: Iterable[TaskItem]) -> dict[str, dict[str, int]]:
    """Per task: items, how many show only part of their input, and the input lines they hide in all."""
    counts: dict[str, dict[str, int]] = {}
    for item in items:
        c = counts.setdefault(item.task, {"items": 0, "cropped": 0, "lines_hidden": 0})
        c["items"] += 1
        if shown := item.meta.get("view"):
            c["cropped"] += 1
            c["lines_hidden"] += shown["of"] - (shown["lines"][1] - shown["lines"][0] + 1)  # type: ignore[index]
    return counts
