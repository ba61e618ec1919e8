"""Task builders: one function -> one item per task. Each builder is deterministic in the function's id."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.tasks.mutations import mutate
from runtime.tasks.source import Function

CLEAN_SHARE = 0.3  # review items left unchanged; the answer is "no issues"
NO_ISSUES = "no issues"


@dataclass(frozen=True)
class TaskItem:
    id: str
    task: str
    split: str
    module: str
    input: str  # what `{input}` in the task's prompt template becomes
    reference: str  # the answer a perfect model gives
    meta: dict[str, object] = field(default_factory=dict)


def rng_for(key: str) -> random.Random:
    return random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))


def first_sentence(docstring: str) -> str:
    """The first sentence of the docstring's first paragraph, on one line."""
    paragraph = " ".join(docstring.split("\n\n", 1)[0].split())
    match = re.search(r"(?<=[.!?])\s", paragraph)
    return paragraph[: match.start()] if match else paragraph


def numbered(code: str) -> str:
    """Code with 1-based line numbers, so that a review can name a line."""
    return "\n".join(f"{i:>3} | {line}" for i, line in enumerate(code.splitlines(), start=1))


def build_generation(fn: Function, split: str) -> TaskItem | None:
    lines = fn.lines
    return TaskItem(f"generation/{fn.id}", "generation", split, fn.module, "\n".join(lines[: fn.body_start]),
                    "\n".join(lines[fn.body_start:]), {"entry_point": fn.qualname.rsplit(".", 1)[-1]})


def build_summarization(fn: Function, split: str) -> TaskItem | None:
    if fn.doc_start == 0:
        return None  # docstring on the def line: nothing sensible to remove
    lines = fn.lines
    stripped = lines[: fn.doc_start] + lines[fn.doc_end + 1:]
    summary = first_sentence(fn.docstring)
    if len(summary.split()) < 3:
        return None
    return TaskItem(f"summarization/{fn.id}", "summarization", split, fn.module, "\n".join(stripped), summary)


def build_completion(fn: Function, split: str) -> TaskItem | None:
    lines = fn.lines
    targets = [i for i in range(fn.body_start, len(lines)) if lines[i].strip()]
    if not targets:
        return None
    cut = rng_for(f"completion/{fn.id}").choice(targets)
    return TaskItem(f"completion/{fn.id}", "completion", split, fn.module, "\n".join(lines[:cut]),
                    lines[cut].strip(), {"indent": len(lines[cut]) - len(lines[cut].lstrip())})


def build_review(fn: Function, split: str) -> TaskItem | None:
    """A function with one seeded bug (70%) or unchanged (30%), drawn only from functions that can be mutated,
    so that clean and buggy items come from the same population."""
    rng = rng_for(f"review/{fn.id}")
    mutant = mutate(fn.code, rng, skip_lines=range(fn.doc_start, fn.doc_end + 1))
    if mutant is None:
        return None
    if rng.random() < CLEAN_SHARE:
        return TaskItem(f"review/{fn.id}", "review", split, fn.module, numbered(fn.code), NO_ISSUES,
                        {"clean": True})
    reference = f"line: {mutant.line + 1}\nkind: {mutant.kind}\nfix: {mutant.original_line.strip()}"
    return TaskItem(f"review/{fn.id}", "review", split, fn.module, numbered(mutant.code), reference,
                    {"clean": False, "line": mutant.line + 1, "kind": mutant.kind,
                     "fixed_line": mutant.original_line.strip(), "buggy_line": mutant.buggy_line.strip()})


BUILDERS: dict[str, Callable[[Function, str], TaskItem | None]] = {
    "generation": build_generation,
    "summarization": build_summarization,
    "completion": build_completion,
    "review": build_review,
}
